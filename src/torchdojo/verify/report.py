"""What `torchdojo grade` writes: grades.csv, feedback/<student>.md and a self-contained summary.html.

Everything here is written from the per-student results alone (OUT/results/*.json), so the files always
agree with each other. Each failure in a feedback file comes with the `torchdojo check` command that
reproduces it: `--case` with the failing case itself when the checker named one (exact whatever seeds the
grading used, and it reveals no hidden seed), else the plain command (public cases) for a failure that
does not depend on the case (a rule, a crash at import).
"""

import csv
import html
import io
import json
import re
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchdojo.runs import atomic_write_bytes, atomic_write_json
from torchdojo.verify.intake import csv_cell
from torchdojo.verify.options import LIMIT_FLAGS

OUTPUT_CHARS = 4000  # of each captured stream, in a feedback file
DETAIL_CHARS = 2000


def _fmt(x: float) -> str:
    return f"{x:g}"


def write_csv(path: Path, results: Sequence[dict[str, Any]], properties: Sequence[str]) -> None:
    """One row per student: the points of each property, points earned, total possible, seconds, note."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["student", *properties, "points", "total", "seconds", "note"])
    for r in results:
        row = [r["student"], *(_fmt(r["points"][p]) for p in properties), _fmt(r["earned"]), _fmt(r["total"])]
        row.append(f"{r['seconds']:.2f}")
        w.writerow([csv_cell(v) for v in [*row, r["note"]]])
    atomic_write_bytes(path, buf.getvalue().encode())


def _repro(settings: Any, entry: str, case: dict | None) -> str:
    """The `torchdojo check` command a student runs in their own folder to see this failure again: the
    failing case itself when there is one, and the limits the grading ran under where they are not check's."""
    parts = ["torchdojo", "check", settings.target, f"{entry}:{settings.entry.cls}"]
    if case is not None:
        parts += ["--case", json.dumps(case, separators=(",", ":"))]
    if settings.allow_builtin:
        parts.append("--allow-builtin")
    defaults = type(settings.limits)()
    for field, flag in LIMIT_FLAGS.items():
        value = getattr(settings.limits, field, None)
        if value is not None and value != getattr(defaults, field, None):
            parts += [flag, _fmt(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _fence(text: str, limit: int) -> str:
    """`text` cut to `limit` characters in a code fence longer than any backtick run inside it."""
    cut = text[:limit] + (f"\n... ({len(text) - limit} more characters not shown)" if len(text) > limit else "")
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", cut)), default=0) + 1)
    return f"{ticks}text\n{cut}\n{ticks}"


def _cases_passed(p: dict[str, Any]) -> str:
    """' (3/70 cases passed)' when the checker counted them."""
    k = p.get("passed_runs")
    return f" ({k}/{p['runs']} cases passed)" if isinstance(k, int) and p["runs"] > 1 else ""


def feedback(result: dict[str, Any], settings: Any) -> str:
    """A student's feedback in Markdown: score, one line per property, each failure with its reproduce
    command, and the submission's captured output (truncated)."""
    v, entry = result["verdict"], result["entry"] or "FILE.py"
    hidden = settings.seeds is not None
    lines = [
        f"# {settings.target}: {result['student']}: {_fmt(result['earned'])} / {_fmt(result['total'])} points",
        "",
        f"Submission `{result['source']}`" + (f", checked as `{entry}:{settings.entry.cls}`." if v else "."),
    ]
    if hidden:
        lines.append("Graded on hidden cases (the same properties as the public ones `torchdojo check` runs).")
    if result["note"]:
        lines += ["", f"**Note:** {result['note']}"]
    by_name = {p["name"]: p for p in (v["properties"] if v else [])}
    lines += ["", "| property | result | points |", "|---|---|---|"]
    for name, pts in settings.rubric.points.items():
        p = by_name.get(name)
        state = (
            "not run"
            if p is None
            else f"FAIL{_cases_passed(p)}"
            if not p["passed"]
            else "pass"
            if v["failure"] is None
            else "not counted"
        )
        lines.append(f"| {name} | {state} | {_fmt(result['points'][name])} / {_fmt(pts)} |")
    if v and v["failure"]:
        lines += ["", "A property counts only when the run finished: this one did not."]
    groups: dict[tuple[str, str], list[dict]] = {}  # properties failing for the same reason on the same case
    for p in by_name.values():
        if not p["passed"]:
            groups.setdefault((p["detail"] or "failed", json.dumps(p.get("case"), sort_keys=True)), []).append(p)
    if v and (groups or v["failure"]):
        lines += ["", "## What to fix", ""]
        if v["failure"]:
            lines += [
                f"- **the run did not finish:** {v['failure']}",
                f"  reproduce: `{_repro(settings, entry, None)}`",
            ]
            if hidden:
                lines.append("  (this runs the public cases)")
        for (detail, _), props in groups.items():
            names = ", ".join(p["name"] for p in props)
            lines += [f"- **{names}**:", "", _fence(detail, DETAIL_CHARS), ""]
            lines.append(f"  reproduce: `{_repro(settings, entry, props[0].get('case'))}`")
    for stream in ("stdout", "stderr"):
        if v and v[stream]:
            lines += ["", f"## Your code's {stream} (captured)", "", _fence(v[stream], OUTPUT_CHARS)]
    return "\n".join(lines) + "\n"


def write_feedback(folder: Path, results: Sequence[dict[str, Any]], settings: Any) -> None:
    """feedback/<student>.md for each student; feedback of students no longer in the class is removed."""
    folder.mkdir(exist_ok=True)
    names = {f"{r['student']}.md" for r in results}
    for old in folder.glob("*.md"):
        if old.name not in names:
            old.unlink()
    for r in results:
        atomic_write_bytes(folder / f"{r['student']}.md", feedback(r, settings).encode())


def _svg_bars(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> str:
    """A small vertical bar chart as inline SVG (no scripts, every label escaped)."""
    w, h, left, bottom, top = 640, 250, 40, 40, 40
    n, peak = max(1, len(values)), max([1.0, *values])
    bw = (w - left - 10) / n
    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{e(title)}">',
        f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{e(title)}</text>',
        f'<text x="{w / 2}" y="{h - 4}" text-anchor="middle" font-size="11">{e(xlabel)}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="#333"/>',
    ]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        bh = (h - bottom - top) * v / peak
        x = left + i * bw
        parts += [
            f'<rect x="{x + 1:.1f}" y="{h - bottom - bh:.1f}" width="{max(1.0, bw - 2):.1f}" height="{bh:.1f}" '
            f'fill="#4c72b0"><title>{e(label)}: {_fmt(v)}</title></rect>',
            f'<text x="{x + bw / 2:.1f}" y="{h - bottom - bh - 3:.1f}" text-anchor="middle" font-size="10">'
            f"{_fmt(v) if v else ''}</text>",
            f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 13}" text-anchor="middle" font-size="10">{e(label)}</text>',
        ]
    return "\n".join([*parts, "</svg>"])


def histogram(totals: Sequence[float], maximum: float, bins: int = 10) -> tuple[list[str], list[float]]:
    """Students per score: one bar per whole point when the maximum is a whole number up to 30, else
    `bins` equal ranges of [0, maximum] (the last one includes the maximum)."""
    if maximum <= 0:
        return [_fmt(maximum)], [float(len(totals))]
    if maximum == int(maximum) <= 30:
        edges = [float(i) for i in range(int(maximum) + 1)]
        labels = [_fmt(e) for e in edges]
    else:
        width = maximum / bins
        edges = [i * width for i in range(bins)]
        labels = [f"{edges[i]:.3g}-{edges[i] + width:.3g}" for i in range(bins)]
    counts = [0.0] * len(edges)
    for t in totals:
        counts[max(i for i, e in enumerate(edges) if t >= e - 1e-9)] += 1
    return labels, counts


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_html(res: Any, settings: Any, described: dict[str, Any]) -> str:
    """The class at a glance (`res`: a grade.ClassResult): score histogram, the most failed properties, the
    slowest submissions, runs that did not finish, students who could not be graded, the settings."""
    e = html.escape
    results = res.results
    total = settings.rubric.total
    totals = [r["earned"] for r in results]
    labels, counts = histogram(totals, total)
    finished = [r for r in results if r["verdict"] and r["verdict"]["failure"] is None]
    fails = {
        p: sum(1 for r in finished if not any(q["name"] == p and q["passed"] for q in r["verdict"]["properties"]))
        for p in settings.rubric.points
    }
    ranked = sorted(fails.items(), key=lambda kv: -kv[1])
    slow = sorted(results, key=lambda r: -r["seconds"])[:10]
    full = sum(1 for t in totals if t == total)
    lines = [
        f"{len(results)} students, {full} with full marks, median {_fmt(statistics.median(totals))} of "
        f"{_fmt(total)} points. This grading: {res.checked} checked, {res.reused} unchanged since the last "
        f"grading in this folder (kept), {res.ungradable} not gradable; {res.seconds:.0f} s.",
    ]
    settings_rows = [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in described.items()]
    process = [[r["student"], r["verdict"]["failure"]] for r in results if r["verdict"] and r["verdict"]["failure"]]
    notes = [[r["student"], r["note"]] for r in results if r["verdict"] is None]
    body = [
        f"<h1>torchdojo grade {e(settings.target)}</h1>",
        *(f"<p>{e(x)}</p>" for x in lines),
        "<h2>Scores</h2>",
        _svg_bars(labels, counts, f"students per total (out of {_fmt(total)})", "total points"),
        "<h2>Most failed properties</h2>",
        f"<p>Among the {len(finished)} students whose run finished (the others are listed below).</p>",
        _svg_bars([p for p, _ in ranked], [float(c) for _, c in ranked], "students failing each property", "property"),
        _table(
            ["property", "points", "students failing"], [[p, _fmt(settings.rubric.points[p]), c] for p, c in ranked]
        ),
        "<h2>Slowest submissions</h2>",
        _table(
            ["student", "seconds", "points", "note"],
            [[r["student"], f"{r['seconds']:.1f}", _fmt(r["earned"]), r["note"]] for r in slow],
        ),
        "<h2>Runs that did not finish</h2>",
        _table(["student", "reason"], process) if process else "<p>none</p>",
        "<h2>Not graded (0 points)</h2>",
        _table(["student", "why"], notes) if notes else "<p>none</p>",
        "<h2>Settings</h2>",
        _table(["setting", "value"], settings_rows),
    ]
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>torchdojo grade</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_outputs(out: Path, res: Any, settings: Any) -> None:
    """grades.csv, feedback/, summary.html and grading.json (the settings) in `out`; `res`: a ClassResult."""
    described = settings.describe()
    write_csv(out / "grades.csv", res.results, list(settings.rubric.points))
    write_feedback(out / "feedback", res.results, settings)
    atomic_write_bytes(out / "summary.html", summary_html(res, settings, described).encode())
    atomic_write_json(out / "grading.json", {**described, "students": len(res.results)})
