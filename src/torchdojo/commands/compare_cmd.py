"""`torchdojo compare RUN RUN...`: runs side by side, one table and overlaid curves."""

import argparse
import json
import time
from pathlib import Path

NAME = "compare"
HELP = "compare runs side by side: a table of final numbers and overlaid curves (writes an HTML page)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="two or more run folders")
    p.add_argument("--out", default=None, help="output folder (default: runs/compare/<timestamp>)")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str)):
            out[prefix + k] = v
    return out


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from torchdojo.errors import DojoError
    from torchdojo.report import Report, figures
    from torchdojo.runs import read_metrics

    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "summary.json").exists():
            raise DojoError(f"{r} has no summary.json (not a finished run folder)", "pass folders from `torchdojo run`")
    summaries = {}
    for r in runs:
        try:
            summary = json.loads((r / "summary.json").read_bytes())
        except (OSError, ValueError, RecursionError) as e:
            raise DojoError(
                f"{r / 'summary.json'} cannot be read ({str(e)[:200]})", "re-run or --resume that run"
            ) from None
        if not isinstance(summary, dict):
            raise DojoError(f"{r / 'summary.json'} is not a JSON object", "re-run or --resume that run")
        summaries[r.name] = _flatten(summary)
    keys = [k for k in dict.fromkeys(k for s in summaries.values() for k in s)]
    rows = [{"metric": k, **{name: s.get(k, "") for name, s in summaries.items()}} for k in keys]
    t = Table(title="runs side by side")
    t.add_column("metric")
    for name in summaries:
        t.add_column(name, justify="right")
    for row in rows:
        t.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()])
    Console().print(t)
    out = Path(args.out) if args.out else Path("runs") / "compare" / time.strftime("%Y%m%d-%H%M%S")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    histories = {}
    for r in runs:
        by_stage: dict[str, list] = {}
        for row in read_metrics(r):
            by_stage.setdefault(row.get("stage", "main"), []).append(row)
        for stage, hist in by_stage.items():
            histories[f"{r.name}/{stage}"] = hist
    report = Report(f"compare: {', '.join(summaries)}")
    report.table(rows, caption="final numbers (summary.json)")
    if histories:
        figures.curves(histories, out / "figures" / "curves.png", title="overlaid curves")
        report.figure("curves.png", "train (solid) and val (dashed) curves of every run and stage")
    print(report.save(out))
    return 0
