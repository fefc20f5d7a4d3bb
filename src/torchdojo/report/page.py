"""The parts of a report page around the experiment's own blocks: the style sheet, the line of run facts, the
smoke-scale banner, the table of contents and the summary, and how every table is drawn (formatted numbers,
readable headers, text left and numbers right, inside a box that scrolls sideways instead of overflowing).

Every text that reaches the page goes through `html.escape`; nothing here reads a file.
"""

import html
import re
from typing import Any

from torchdojo.report.format import cell_kinds, format_value, is_number, readable
from torchdojo.report.summary import summary_tables

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.45}
h1{border-bottom:2px solid #3b6ea5;padding-bottom:.3em}h2{margin-top:1.8em;color:#22456e}
.scroll{overflow-x:auto;max-width:100%;margin:.6em 0 1.2em}
table{border-collapse:collapse;font-size:.92em}
th,td{border:1px solid #c9d2de;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#eef3f9}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.num{white-space:nowrap}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
figure{display:inline-block;vertical-align:top;margin:1em 1em 1em 0;max-width:100%}
figure img{max-width:100%;border:1px solid #e3e8ef}figcaption{color:#4a5568;font-size:.9em}
pre{background:#f5f7fa;padding:.8em;overflow-x:auto;border:1px solid #e3e8ef}
p,li,h1,h2,h3,h4,caption,figcaption,.warn,.brk{overflow-wrap:anywhere}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em .8em}.meta{color:#4a5568;font-size:.9em}
.smoke{background:#fde8e8;border:2px solid #c53030;color:#742a2a;padding:.7em 1em;font-weight:600;margin:1em 0}
nav.toc{background:#f5f7fa;border:1px solid #e3e8ef;padding:.4em 1.2em;margin:1em 0}
nav.toc h2{margin:.4em 0;font-size:1.1em}nav.toc ol{margin:.2em 0;padding-left:1.4em}nav.toc a{color:#22456e}
.note{color:#4a5568;font-size:.9em}
"""

LONG_WORD = re.compile(r"\S{40}")  # a cell with a word this long may break anywhere (else it never breaks)

SMOKE = (
    "Smoke scale: this run is a wiring test. It trained on a few hundred examples for a few batches, so what it "
    "trained (accuracies, losses, curves, and any comparison or conclusion drawn from them) means nothing about "
    "the methods; exact counts and checks are unaffected. Run with --scale small (minutes) or --scale full (the "
    "course's own settings) for results."
)


def _cell(v: Any, kind: str, tag: str = "td") -> str:
    text = format_value(v, kind)
    classes = [c for c, on in (("num", is_number(v)), ("brk", bool(LONG_WORD.search(text)))) if on]
    attr = f" class='{' '.join(classes)}'" if classes else ""
    return f"<{tag}{attr}>{html.escape(text)}</{tag}>"


def table_html(columns: list[Any], rows: list[list[Any]], caption: str = "") -> str:
    """A table: headers in words, numbers formatted by their column's (or row's) kind and right-aligned."""
    numeric = [
        bool(cells) and all(is_number(v) for v in cells)
        for cells in ([r[i] for r in rows if i < len(r) and r[i] != ""] for i in range(len(columns)))
    ]
    head = "".join(
        f"<th{' class=num' if num else ''}{' title=' + _attr(c) if readable(c) != str(c) else ''}>"
        f"{html.escape(readable(c))}</th>"
        for c, num in zip(columns, numeric, strict=True)
    )
    kinds = cell_kinds(columns, rows)
    body = "".join(
        "<tr>" + "".join(_cell(v, k) for v, k in zip(row, ks, strict=True)) + "</tr>"
        for row, ks in zip(rows, kinds, strict=True)
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<div class='scroll'><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _attr(text: Any) -> str:
    return "'" + html.escape(str(text), quote=True) + "'"


def meta_line(run_name: str, cfg: dict[str, Any], env: dict[str, Any]) -> str:
    """The run's facts in one line: folder, experiment, scale, seed, device, torch, git revision."""
    config = cfg.get("config") if isinstance(cfg.get("config"), dict) else {}
    bits = [
        f"run {run_name}",
        f"experiment {cfg.get('experiment', '?')}",
        f"scale {cfg.get('scale', '?')}",
        f"seed {config.get('seed', '?')}",
        f"device {env.get('device', '?')}",
        f"torch {env.get('torch', '?')}",
        f"git {str(env.get('git_revision') or '-')[:10]}",
    ]
    return f"<p class='meta'>{html.escape(' · '.join(bits))}</p>"


def smoke_banner() -> str:
    return f"<div class='smoke' role='note'>{html.escape(SMOKE)}</div>"


def toc_html(headings: list[tuple[str, int, str]]) -> str:
    """A table of contents of (anchor, level, text) headings: level 2 entries, level 3 nested under them."""
    out = ["<nav class='toc'><h2>Contents</h2><ol>"]
    open_sub = False
    for anchor, level, text in headings:
        link = f"<a href='#{anchor}'>{html.escape(text)}</a>"
        if level >= 3 and len(out) > 1:
            if not open_sub:
                out[-1] = out[-1].removesuffix("</li>") + "<ol>"
                open_sub = True
            out.append(f"<li>{link}</li>")
            continue
        if open_sub:
            out.append("</ol></li>")
            open_sub = False
        out.append(f"<li>{link}</li>")
    if open_sub:
        out.append("</ol></li>")
    out.append("</ol></nav>")
    return "".join(out)


def summary_html(summary: dict[str, Any] | None, finished_expected: bool) -> str:
    """The summary section: summary.json's numbers as tables, or a line saying the run has not finished."""
    parts = ["<h2 id='summary'>Summary</h2>"]
    if summary is None:
        if not finished_expected:
            return ""
        parts.append("<p class='note'>This run has not finished: there is no summary.json yet.</p>")
        return "\n".join(parts)
    parts.append(
        "<p class='note'>The run's final numbers, from its summary.json; the sections below show how each was "
        "measured.</p>"
    )
    for t in summary_tables(summary):
        parts.append(table_html(t.columns, t.rows, t.caption))
        if t.left_out:
            parts.append(f"<p class='note'>… and {t.left_out:,} more rows in summary.json.</p>")
    return "\n".join(parts)
