"""The report document: blocks saved as JSON, rendered to one self-contained, escaped HTML page."""

import base64
import html
import json
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from torchdojo.errors import DojoError
from torchdojo.report.page import CSS, meta_line, smoke_banner, summary_html, table_html, toc_html
from torchdojo.runs import atomic_write_bytes, atomic_write_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_FIGURE_BYTES = 64 << 20  # a figure torchdojo draws is well under 5 MB
MAX_JSON_BYTES = 64 << 20
BLOCK_TYPES = ("heading", "text", "code", "table", "figure", "warning")


class ReportError(DojoError):
    """report.json (or a file it names) is not what torchdojo writes: refused before anything is read from it."""


class FigureRefused(ReportError):
    """A figure block names a file that is not a PNG inside its run folder; nothing is read from it."""


def _shown(s: Any, n: int = 120) -> str:
    """A value for an error message: repr'd, at most n characters."""
    r = repr(s)
    return r if len(r) <= n else r[: n - 1] + "…"


def unsafe_figure_path(path: Any) -> str | None:
    """Why a figure path is refused on its face (before the file system is asked), or None.

    A figure path is relative and has no '..' part: a bare name (figures/NAME.png) or a path below the run folder."""
    if not isinstance(path, str) or not path:
        return "the path is not a non-empty string"
    if "\x00" in path:
        return "the path contains a NUL byte"
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).anchor:
        return "the path is absolute"
    if ".." in PurePosixPath(path).parts or ".." in PureWindowsPath(path).parts:
        return "the path has a '..' part"
    return None


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
        """A PNG under the run folder; stored by its path relative to the run folder (an absolute path by its
        name: figures/NAME.png). A relative path with a '..' part is a bug in the caller: ValueError."""
        stored = Path(path).name if Path(path).is_absolute() else str(path)
        why = unsafe_figure_path(stored)
        if why:
            raise ValueError(f"figure path {_shown(stored)}: {why}")
        self.blocks.append({"type": "figure", "path": stored, "caption": caption})

    def warning(self, text: str) -> None:
        self.blocks.append({"type": "warning", "text": text})

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "blocks": self.blocks}

    def save(self, run_dir: Path, summary: dict[str, Any] | None = None) -> Path:
        """Write report.json and render report.html; `summary` is the run's summary (summary.json is read when
        it is not given)."""
        atomic_write_json(Path(run_dir) / "report.json", self.to_dict())
        return render_html(run_dir, summary)

    @classmethod
    def load(cls, run_dir: Path) -> "Report":
        """The report of run_dir/report.json, checked like `render_html` checks it (ReportError if malformed)."""
        run_dir = Path(run_dir)
        doc = _read_json(run_dir, "report.json")
        _check_doc(run_dir / "report.json", doc)
        return cls(doc["title"], doc["blocks"])


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


def _inside(run_dir: Path, rel: str) -> Path:
    """run_dir/rel resolved (symlinks followed), or ReportError if that lands outside the run folder."""
    root = run_dir.resolve()
    try:
        target = (run_dir / rel).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ReportError(f"{run_dir / rel} cannot be resolved ({e})", "remove the looping symlink") from None
    if target == root or not target.is_relative_to(root):
        raise ReportError(
            f"{run_dir / rel} leads outside the run folder (to {target})",
            "a run folder's files must stay inside it; remove the link, or copy the file into the folder",
        )
    return target


def _read_inside(run_dir: Path, rel: str, limit: int) -> bytes:
    """The bytes of a regular file inside run_dir, at most `limit` of them; never follows a path out of the folder,
    never opens a FIFO or device, and never reads past `limit`."""
    target = _inside(run_dir, rel)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ReportError(
            f"cannot open {run_dir / rel}: {e.strerror}", "check that it exists and is readable"
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ReportError(f"{run_dir / rel} is not a regular file", "replace it with the file torchdojo wrote")
        if st.st_size > limit:
            raise ReportError(
                f"{run_dir / rel} is {st.st_size:,} bytes, over the {limit:,}-byte limit",
                "replace it with the file torchdojo wrote (figures and report.json are far smaller)",
            )
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ReportError(f"{run_dir / rel} grew past the {limit:,}-byte limit while read", "try again")
    return data


def _read_json(run_dir: Path, name: str) -> Any:
    try:
        return json.loads(_read_inside(run_dir, name, MAX_JSON_BYTES))
    except ReportError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ReportError(
            f"{run_dir / name} is not valid JSON ({str(e)[:200]})",
            f"restore {name} (re-run the experiment to write it again)",
        ) from None


_FIX = (
    "a figure block names a PNG inside its run folder (figures/NAME.png); remove or correct that block in "
    "report.json, or re-run the experiment to write the report again"
)


def _check_doc(where: Path, doc: Any) -> None:
    """ReportError unless doc has the shape `Report.to_dict` writes (figure paths are checked when read)."""

    def bad(what: str) -> ReportError:
        return ReportError(f"{where}: {what}", "restore report.json, or re-run the experiment to write it again")

    if not isinstance(doc, dict) or not isinstance(doc.get("title"), str) or not isinstance(doc.get("blocks"), list):
        raise bad("not a report (an object with a string 'title' and a list of 'blocks')")
    for i, b in enumerate(doc["blocks"]):
        t = b.get("type") if isinstance(b, dict) else None
        if t not in BLOCK_TYPES:
            raise bad(f"block {i} has no known type ({_shown(t)}; known: {', '.join(BLOCK_TYPES)})")
        required = {"figure": ("path",), "table": ()}.get(t, ("text",))
        optional = ("caption",) if t in ("figure", "table") else ()
        for key in required + optional:
            if (key in required and key not in b) or not isinstance(b.get(key, ""), str):
                raise bad(f"block {i} ({t}): {key!r} is not a string")
        level = b.get("level", 2)
        if t == "heading" and (not isinstance(level, int) or isinstance(level, bool)):
            raise bad(f"block {i} (heading): level {_shown(level)} is not an integer")
        if t == "table":
            cols, rows = b.get("columns"), b.get("rows")
            if not isinstance(cols, list) or not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
                raise bad(f"block {i} (table): 'columns' and 'rows' are not lists (rows: lists of cells)")


def _figure_bytes(run_dir: Path, rel: Any) -> bytes | None:
    """The PNG a figure block names, or None when it is missing; FigureRefused (before anything is read) for a path
    that is absolute, has a '..' part, leads outside the run folder (a symlink), or for a file that is not a PNG."""

    def refused(why: str) -> FigureRefused:
        return FigureRefused(f"{run_dir / 'report.json'}: figure {_shown(rel)} refused: {why}", _FIX)

    why = unsafe_figure_path(rel)
    if why:
        raise refused(why)
    candidates = [run_dir / rel, run_dir / "figures" / rel]  # as named, else under figures/ (what Report writes)
    chosen = next((c for c in candidates if os.path.lexists(c)), None)
    if chosen is None:
        return None
    rel_chosen = str(chosen.relative_to(run_dir))
    try:
        target = _inside(run_dir, rel_chosen)
    except ReportError as e:
        raise refused(e.problem) from None
    if not target.exists():
        return None  # a dangling link inside the folder: missing
    try:
        data = _read_inside(run_dir, rel_chosen, MAX_FIGURE_BYTES)
    except ReportError as e:
        raise refused(e.problem) from None
    if not data.startswith(PNG_SIGNATURE):
        raise refused("the file is not a PNG image")
    return data


def _run_facts(run_dir: Path) -> dict[str, dict[str, Any]]:
    """config.json and env.json of the run folder, those present (each must be a JSON object)."""
    meta = {}
    for name in ("config.json", "env.json"):
        if os.path.lexists(run_dir / name):
            meta[name] = _read_json(run_dir, name)
            if not isinstance(meta[name], dict):
                raise ReportError(f"{run_dir / name} is not a JSON object", f"restore {name} or delete it")
    return meta


def _trained(run_dir: Path) -> bool:
    """Whether the run trained anything: it logged at least one epoch (metrics.jsonl, a regular file, not empty).
    A run that only counts and checks (arch-arithmetic) is exact at any scale: no smoke banner."""
    try:
        st = os.lstat(run_dir / "metrics.jsonl")
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def _summary(run_dir: Path, summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The summary to show: the one given (the run, about to write it), else run_dir/summary.json, else None."""
    if summary is not None or not os.path.lexists(run_dir / "summary.json"):
        return summary
    found = _read_json(run_dir, "summary.json")
    if not isinstance(found, dict):
        raise ReportError(f"{run_dir / 'summary.json'} is not a JSON object", "re-run or --resume the run")
    return found


def _block_html(run_dir: Path, b: dict[str, Any], anchor: str) -> str:
    t = b["type"]
    if t == "heading":
        lvl = min(max(b.get("level", 2), 2), 4)
        return f"<h{lvl} id='{anchor}'>{html.escape(b['text'])}</h{lvl}>"
    if t == "text":
        return _text_html(b["text"])
    if t == "warning":
        return f"<div class='warn'>{html.escape(b['text'])}</div>"
    if t == "code":
        return f"<pre>{html.escape(b['text'])}</pre>"
    if t == "table":
        return table_html(b["columns"], b["rows"], b.get("caption", ""))
    png = _figure_bytes(run_dir, b["path"])
    if png is None:
        return f"<div class='warn'>missing figure {html.escape(b['path'])}</div>"
    src = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    return (
        f"<figure><img src='{src}' alt='{html.escape(b.get('caption', ''), quote=True)}'>"
        f"<figcaption>{html.escape(b.get('caption', ''))}</figcaption></figure>"
    )


def render_html(run_dir: Path, summary: dict[str, Any] | None = None) -> Path:
    """Render run_dir/report.json and its figures into run_dir/report.html (images embedded): the title, the run's
    facts, a banner on a smoke-scale run, a table of contents, the summary (`summary`, else summary.json), then
    the blocks."""
    run_dir = Path(run_dir)
    doc = _read_json(run_dir, "report.json")
    _check_doc(run_dir / "report.json", doc)
    meta = _run_facts(run_dir)
    summary = _summary(run_dir, summary)
    cfg = meta.get("config.json", {})
    head = [f"<h1>{html.escape(doc['title'])}</h1>"]
    if meta:
        head.append(meta_line(run_dir.name, cfg, meta.get("env.json", {})))
    if cfg.get("scale") == "smoke" and _trained(run_dir):
        head.append(smoke_banner())
    anchors = [f"s{i}" for i in range(len(doc["blocks"]))]
    body = [_block_html(run_dir, b, a) for b, a in zip(doc["blocks"], anchors, strict=True)]
    headings = [  # the table of contents: sections (level 2) and their parts (level 3)
        (a, max(b.get("level", 2), 2), b["text"])
        for b, a in zip(doc["blocks"], anchors, strict=True)
        if b["type"] == "heading" and b.get("level", 2) <= 3
    ]
    top = summary_html(summary, finished_expected="config.json" in meta)
    if top:
        headings.insert(0, ("summary", 2, "Summary"))
    parts = head + ([toc_html(headings)] if len(headings) > 1 else []) + ([top] if top else []) + body
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        f"style-src 'unsafe-inline'\">"
        f"<title>{html.escape(doc['title'])}</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    out = run_dir / "report.html"
    try:
        atomic_write_bytes(out, page.encode())
    except OSError as e:
        raise ReportError(
            f"cannot write {out}: {e.strerror or e}", "make the run folder writable and free some disk space"
        ) from None
    return out
