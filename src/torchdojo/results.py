"""A run folder seen from Python: `Result` (what `torchdojo.run` and `torchdojo.load` return) and `Table`.

Everything a `Result` shows is read from the folder when asked for (summary.json, config.json,
metrics.jsonl, figures/, report.html), so it is always what the run wrote, also while a run is still going.
In Jupyter a `Result` displays its report inline: the body of report.html (figures are embedded as data
URIs, so it needs no file access and no iframe) with the report's stylesheet scoped to it.
"""

import html
import json
import re
from pathlib import Path
from typing import Any

from torch import nn

from torchdojo.errors import DojoError
from torchdojo.runs import read_metrics

SCOPE = "torchdojo-report"


class Table:
    """Rows of a table (one dict per row) with the columns in first-seen order; shown as HTML in Jupyter.
    What `Result.history` gives when pandas is not installed (with pandas: a `pandas.DataFrame`)."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = [dict(r) for r in rows]
        self.columns = list(dict.fromkeys(k for r in self.rows for k in r))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, column: str) -> list[Any]:
        """One column as a list (a row without the key gives None)."""
        if column not in self.columns:
            raise KeyError(f"no column {column!r}; columns: {', '.join(self.columns)}")
        return [r.get(column) for r in self.rows]

    def __repr__(self) -> str:
        cells = [[_cell(r.get(c)) for c in self.columns] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in self.columns) + "</tr>"
            for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def table(rows: list[dict[str, Any]]) -> Any:
    """`rows` as a pandas DataFrame when pandas is importable, else as a `Table`."""
    try:
        import pandas
    except ImportError:
        return Table(rows)
    return pandas.DataFrame(rows)


class Result:
    """One run folder: `.path`, `.summary`, `.config`, `.history`, `.figures`, `.report_path`,
    `.load_model(stage)`; displayed in Jupyter as its report."""

    def __init__(self, path: str | Path):
        self.path = Path(path).absolute()  # still the run's folder after a chdir

    def __repr__(self) -> str:
        cfg = self.config
        state = "finished" if (self.path / "summary.json").is_file() else "not finished"
        return f"Result({cfg.get('experiment')!r}, scale={cfg.get('scale')!r}, path='{self.path}', {state})"

    def _json(self, name: str) -> Any:
        path = self.path / name
        if not path.is_file():
            raise DojoError(f"{path} does not exist", "the run has not finished (or the folder is not a run)")
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise DojoError(f"{path} is not valid JSON ({e})", "re-run the experiment to write it again") from None

    @property
    def summary(self) -> dict[str, Any]:
        """The run's final numbers (summary.json; written last, when the run finished)."""
        return self._json("summary.json")

    @property
    def config(self) -> dict[str, Any]:
        """config.json: experiment, scale, preset, your settings, the resolved config, and under `stages` the
        training config each stage really ran with."""
        return self._json("config.json")

    @property
    def stages(self) -> list[str]:
        """The stages with metrics, in the order they trained."""
        return list(dict.fromkeys(str(r.get("stage", "main")) for r in read_metrics(self.path)))

    @property
    def history(self) -> dict[str, Any]:
        """Per stage, its epochs as a table (a pandas DataFrame when pandas is installed, else a `Table`):
        one row per epoch with the losses, metrics, learning rate and seconds that metrics.jsonl holds."""
        rows = read_metrics(self.path)
        out: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(str(r.get("stage", "main")), []).append({k: v for k, v in r.items() if k != "stage"})
        return {stage: table(stage_rows) for stage, stage_rows in out.items()}

    @property
    def figures(self) -> dict[str, Path]:
        """Figure name (the file's stem) -> its PNG under figures/, sorted by name."""
        return {p.stem: p for p in sorted((self.path / "figures").glob("*.png"))}

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def load_model(self, stage: str | None = None, device: str = "cpu") -> nn.Module:
        """The model `stage` trained (default: the last stage that trained), rebuilt from its best.pt in eval
        mode. `torchdojo.checkpoints.predict(model, images)` classifies image files or uint8 tensors with it,
        prepared as the run prepared its test images."""
        from torchdojo.checkpoints import rebuild

        return rebuild(self.path, stage, device)

    def _repr_html_(self) -> str:
        header = (
            f"<p><code>{html.escape(str(self.path))}</code> · <code>{html.escape(self.report_path.name)}</code></p>"
        )
        if self.report_path.is_file():
            return f"<div class='{SCOPE}'>{header}{embed(self.report_path.read_text())}</div>"
        return f"<div class='{SCOPE}'>{header}<p>No report.html yet (the run has not finished).</p></div>"


def embed(page: str) -> str:
    """A report.html page as a fragment for a notebook output: its body, and its stylesheet scoped to the
    `.torchdojo-report` wrapper (so the report's CSS styles the report, not the notebook around it)."""
    body = re.search(r"<body[^>]*>(.*)</body>", page, re.S)
    styles = re.findall(r"<style[^>]*>(.*?)</style>", page, re.S)
    css = "".join(scope_css(s, f".{SCOPE}") for s in styles)
    return (f"<style>{css}</style>" if css else "") + (body.group(1) if body else "")


def scope_css(css: str, scope: str) -> str:
    """Each rule of `css` limited to elements under `scope`; `html`, `body` and `:root` become the scope itself.
    Rules inside @media / @supports are scoped the same way; other at-rules (@font-face, @page, @keyframes)
    are dropped. Comments are removed."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out, i = [], 0
    while i < len(css):
        brace = css.find("{", i)
        if brace < 0:
            break
        head = css[i:brace].strip()
        end = _matching(css, brace)
        inner = css[brace + 1 : end]
        if head.startswith("@media") or head.startswith("@supports"):
            out.append(f"{head}{{{scope_css(inner, scope)}}}")
        elif head and not head.startswith("@"):
            out.append(f"{','.join(_scoped(s.strip(), scope) for s in head.split(','))}{{{inner}}}")
        i = end + 1
    return "".join(out)


def _matching(css: str, start: int) -> int:
    """Index of the '}' that closes the '{' at `start` (the end of the text if none does)."""
    depth = 0
    for j in range(start, len(css)):
        depth += {"{": 1, "}": -1}.get(css[j], 0)
        if depth == 0:
            return j
    return len(css)


def _scoped(selector: str, scope: str) -> str:
    """`selector` under `scope`: leading `html`, `body` or `:root` parts are the scope itself (`body.x` the scope
    with class x, `body .x` an element with class x inside it)."""
    rest, compound = selector, ""
    while m := re.match(r"(html|body|:root)(?![\w-])", rest):
        rest = rest[m.end() :]
        compound = rest if rest and rest[0] in ".#:[" else ""
        rest = rest.lstrip()
        if compound:
            break
    if compound:
        return scope + compound
    return f"{scope} {rest}" if rest else scope
