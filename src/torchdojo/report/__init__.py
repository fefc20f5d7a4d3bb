"""Reports: an experiment adds blocks (text, tables, figures) to a `Report`, saved as report.json in
the run folder; `render_html` turns that folder into a self-contained report.html, reading nothing outside it
(a figure that is not a PNG inside the run folder is refused: `FigureRefused`).
"""

from torchdojo.report.document import FigureRefused, Report, ReportError, render_html

__all__ = ["FigureRefused", "Report", "ReportError", "render_html"]
