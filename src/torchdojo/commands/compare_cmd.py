"""`torchdojo compare RUN RUN...`: runs side by side: which run is which, how their settings differ, their final
numbers in one table and their curves overlaid.

A run is labelled by what it is, not when it ran: its experiment, its scale, and the settings (`--set`,
`--rungs`, `--preset`) on which the runs differ (`ladder small train.lr=0.01`)."""

import argparse
import json
import time
from pathlib import Path
from typing import Any

NAME = "compare"
HELP = "compare runs side by side: labels, a config-diff table, final numbers and overlaid curves (an HTML page)"


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


def _read_object(path: Path, required: bool) -> dict[str, Any]:
    """A run folder's JSON object file; {} when it is absent and not required; a DojoError when unreadable."""
    from torchdojo.errors import DojoError

    if not path.exists():
        if required:
            raise DojoError(
                f"{path.parent} has no {path.name} (not a finished run folder)", "pass folders from `torchdojo run`"
            )
        return {}
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise DojoError(f"{path} cannot be read ({str(e)[:200]})", "re-run or --resume that run") from None
    if not isinstance(data, dict):
        raise DojoError(f"{path} is not a JSON object", "re-run or --resume that run")
    return data


def _settings(config: dict[str, Any]) -> dict[str, str]:
    """What the user chose for a run: the preset and every `--set`/`--rungs` setting, as text."""
    from torchdojo.config import parse_overrides
    from torchdojo.errors import DojoError

    chosen = {"preset": str(config["preset"])} if config.get("preset") else {}
    try:
        user = parse_overrides(config.get("overrides") or [])
    except (DojoError, TypeError, ValueError):
        user = {}
    return chosen | {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in user.items()}


def _resolved(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """config.json's resolved `config`, flattened to dotted keys; a list (rungs, augmentations) as 'a,b'."""
    resolved = config.get("config") if not prefix else config
    out: dict[str, Any] = {}
    for k, v in (resolved if isinstance(resolved, dict) else {}).items():
        if isinstance(v, dict):
            out.update(_resolved(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out[prefix + k] = ",".join(str(x) for x in v)
        else:
            out[prefix + k] = v
    return out


def labels(configs: list[dict[str, Any]], names: list[str]) -> list[str]:
    """One label per run: experiment, scale and the settings whose values are not the same for every run (a run
    that did not set one shows its resolved value from config.json, or for a `group.key` setting '(stage
    default)': each stage then trained with its own default); runs that would still share a label get their
    folder's name after it."""
    chosen = [_settings(c) for c in configs]
    keys = list(dict.fromkeys(k for s in chosen for k in s))
    differ = [k for k in keys if len({s.get(k) for s in chosen}) > 1]
    out = []
    for cfg, s in zip(configs, chosen, strict=True):
        resolved = _resolved(cfg)
        bits = [str(cfg.get("experiment", "?")), str(cfg.get("scale", "?"))]
        for k in differ:
            if k in s:
                bits.append(f"{k}={s[k]}")
            elif "." in k:  # a train.* setting left alone: each stage's own default applied, not one value
                bits.append(f"{k}=(stage default)")
            else:
                bits.append(f"{k}={resolved[k]}" if resolved.get(k) is not None else f"no {k}")
        out.append(" ".join(bits))
    return [f"{label} ({name})" if out.count(label) > 1 else label for label, name in zip(out, names, strict=True)]


def config_diff(configs: list[dict[str, Any]], run_labels: list[str]) -> list[dict[str, Any]]:
    """The resolved settings (config.json) that differ between the runs: one row per setting, one column per run."""
    flat = []
    for c in configs:
        top = {k: c[k] for k in ("experiment", "scale", "preset") if k in c and c[k] is not None}
        flat.append({**top, **_resolved(c)})
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [
        {"setting": k, **{label: f.get(k, "-") for label, f in zip(run_labels, flat, strict=True)}}
        for k in keys
        if len({json.dumps(f.get(k)) for f in flat}) > 1
    ]


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from torchdojo.report import Report, figures
    from torchdojo.report.format import format_value, kind_of
    from torchdojo.runs import read_metrics

    runs = [Path(r) for r in args.runs]
    summaries = [_read_object(r / "summary.json", required=True) for r in runs]
    configs = [_read_object(r / "config.json", required=False) for r in runs]
    run_labels = labels(configs, [r.name for r in runs])
    flat = {label: _flatten(s) for label, s in zip(run_labels, summaries, strict=True)}
    keys = list(dict.fromkeys(k for s in flat.values() for k in s))
    rows = [{"metric": k, **{label: s.get(k, "") for label, s in flat.items()}} for k in keys]
    diff = config_diff(configs, run_labels)

    t = Table(title="runs side by side")
    t.add_column("metric")
    for label in run_labels:
        t.add_column(label, justify="right")
    for row in rows:
        t.add_row(*[format_value(v, kind_of(row["metric"])) for v in row.values()])
    Console().print(t)

    out = Path(args.out) if args.out else Path("runs") / "compare" / time.strftime("%Y%m%d-%H%M%S")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    histories = {}
    for label, r in zip(run_labels, runs, strict=True):
        by_stage: dict[str, list] = {}
        for row in read_metrics(r):
            by_stage.setdefault(row.get("stage", "main"), []).append(row)
        for stage, hist in by_stage.items():
            histories[f"{label} / {stage}"] = hist
    report = Report(f"compare: {' | '.join(run_labels)}")
    report.heading("The runs")
    report.table([{"label": label, "run folder": str(r)} for label, r in zip(run_labels, runs, strict=True)])
    report.heading("Settings that differ")
    if diff:
        report.table(
            diff,
            caption="resolved settings (config.json) that are not the same in every run; a train.* value is the "
            "experiment's own, which a stage's default may replace (config.json's stages has what each stage used)",
        )
    else:
        report.text("The runs were made with the same resolved settings.")
    report.heading("Final numbers")
    report.table(rows, caption="final numbers (summary.json)")
    if histories:
        report.heading("Curves")
        figures.curves(histories, out / "figures" / "curves.png", title="overlaid curves")
        report.figure("curves.png", "train (solid) and val (dashed) curves of every run and stage")
    print(report.save(out))
    return 0
