"""The report document: blocks saved as JSON, rendered to one self-contained, escaped HTML page."""

import base64
import html
import json
from pathlib import Path
from typing import Any

from torchdojo.runs import atomic_write_bytes, atomic_write_json


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        if abs(v) >= 1e5 or (0 < abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


class Report:
    """An ordered list of blocks; each block is plain JSON so the report can be re-rendered later."""

    def __init__(self, title: str, blocks: list[dict[str, Any]] | None = None):
        self.title = title
        self.blocks: list[dict[str, Any]] = blocks or []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append({"type": "heading", "text": text, "level": level})

    def text(self, text: str) -> None:
        """A paragraph; blank lines separate paragraphs, lines starting with '- ' make a list."""
        self.blocks.append({"type": "text", "text": text})

    def code(self, text: str) -> None:
        self.blocks.append({"type": "code", "text": text})

    def table(self, rows: list[dict[str, Any]], caption: str = "", columns: list[str] | None = None) -> None:
        """A table of `rows`; its columns are `columns`, or else every key of the rows in first-seen order
        (each once). A row without a column's key shows an empty cell."""
        cols = list(dict.fromkeys(columns or (k for r in rows for k in r)))
        self.blocks.append(
            {"type": "table", "caption": caption, "columns": cols, "rows": [[r.get(c, "") for c in cols] for r in rows]}
        )

    def figure(self, path: str | Path, caption: str = "") -> None:
        """A PNG under the run folder; stored by its path relative to the run folder."""
        self.blocks.append(
            {"type": "figure", "path": Path(path).name if Path(path).is_absolute() else str(path), "caption": caption}
        )

    def warning(self, text: str) -> None:
        self.blocks.append({"type": "warning", "text": text})

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "blocks": self.blocks}

    def save(self, run_dir: Path) -> Path:
        atomic_write_json(Path(run_dir) / "report.json", self.to_dict())
        return render_html(run_dir)

    @classmethod
    def load(cls, run_dir: Path) -> "Report":
        data = json.loads((Path(run_dir) / "report.json").read_text())
        return cls(data["title"], data["blocks"])


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.45}
h1{border-bottom:2px solid #3b6ea5;padding-bottom:.3em}h2{margin-top:1.8em;color:#22456e}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #c9d2de;padding:.3em .6em;text-align:right}th{background:#eef3f9}
td:first-child,th:first-child{text-align:left}caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
figure{display:inline-block;vertical-align:top;margin:1em 1em 1em 0;max-width:100%}
figure img{max-width:100%;border:1px solid #e3e8ef}figcaption{color:#4a5568;font-size:.9em}
pre{background:#f5f7fa;padding:.8em;overflow-x:auto;border:1px solid #e3e8ef}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em .8em}.meta{color:#4a5568;font-size:.9em}
"""


def _text_html(text: str) -> str:
    out = []
    for para in text.strip().split("\n\n"):
        lines = para.splitlines()
        if lines and all(line.lstrip().startswith("- ") for line in lines):
            items = "".join(f"<li>{html.escape(line.lstrip()[2:])}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{html.escape(para)}</p>")
    return "\n".join(out)


def render_html(run_dir: Path) -> Path:
    """Render run_dir/report.json and its figures into run_dir/report.html (images embedded)."""
    run_dir = Path(run_dir)
    doc = json.loads((run_dir / "report.json").read_text())
    parts = [f"<h1>{html.escape(doc['title'])}</h1>"]
    meta = []
    for name in ("config.json", "env.json"):
        if (run_dir / name).exists():
            meta.append(json.loads((run_dir / name).read_text()))
    if meta:
        cfg = meta[0]
        env = meta[1] if len(meta) > 1 else {}
        bits = [
            f"run {run_dir.name}",
            f"experiment {cfg.get('experiment', '?')}",
            f"scale {cfg.get('scale', '?')}",
            f"seed {cfg.get('config', {}).get('seed', '?')}",
            f"device {env.get('device', '?')}",
            f"torch {env.get('torch', '?')}",
            f"git {str(env.get('git_revision') or '-')[:10]}",
        ]
        parts.append(f"<p class='meta'>{html.escape(' · '.join(bits))}</p>")
    for b in doc["blocks"]:
        t = b["type"]
        if t == "heading":
            lvl = min(max(int(b.get("level", 2)), 2), 4)
            parts.append(f"<h{lvl}>{html.escape(b['text'])}</h{lvl}>")
        elif t == "text":
            parts.append(_text_html(b["text"]))
        elif t == "warning":
            parts.append(f"<div class='warn'>{html.escape(b['text'])}</div>")
        elif t == "code":
            parts.append(f"<pre>{html.escape(b['text'])}</pre>")
        elif t == "table":
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in b["columns"])
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in b["rows"]
            )
            cap = f"<caption>{html.escape(b['caption'])}</caption>" if b.get("caption") else ""
            parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif t == "figure":
            path = run_dir / "figures" / b["path"] if not (run_dir / b["path"]).exists() else run_dir / b["path"]
            if path.exists():
                data = base64.b64encode(path.read_bytes()).decode()
                src = f"data:image/png;base64,{data}"
                parts.append(
                    f"<figure><img src='{src}' alt='{html.escape(b.get('caption', ''), quote=True)}'>"
                    f"<figcaption>{html.escape(b.get('caption', ''))}</figcaption></figure>"
                )
            else:
                parts.append(f"<div class='warn'>missing figure {html.escape(b['path'])}</div>")
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        f"style-src 'unsafe-inline'\">"
        f"<title>{html.escape(doc['title'])}</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    out = run_dir / "report.html"
    atomic_write_bytes(out, page.encode())
    return out
