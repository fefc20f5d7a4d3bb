"""Reports: an experiment adds blocks (text, tables, figures) to a `Report`, saved as report.json in
the run folder; `render_html` turns that folder into a self-contained report.html.
"""

from torchdojo.report.document import Report, render_html

__all__ = ["Report", "render_html"]
