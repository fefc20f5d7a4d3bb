"""Repeated runs: `torchdojo run EXP --seeds N` runs an experiment N times and reports what holds across seeds.

    RUN_DIR/config.json            how the run was started, with "seeds": [base, base + 1, ...]
    RUN_DIR/seeds/seed-K/          a complete run folder of seed base + K (its own report.html)
    RUN_DIR/summary.json           per regime and metric {mean, std, low, high, n, values}, "learned", and
                                   the comparisons of the headline metric (torchdojo.stats.compare)
    RUN_DIR/report.html            mean, std and 95% interval per metric; every seed's validation curve
                                   drawn faintly behind the mean; the comparison text

A seed sets everything the experiment draws at random (the validation split, initial weights, batch order,
augmentation), and within one seed every regime shares them, so regimes are compared seed by seed (a paired
interval). Each seed resumes on its own: `--resume RUN_DIR` skips finished seeds and resumes a cut one.

What an experiment's summary holds is read generically: its regimes are the entries of the summary's dict of
dicts (`regimes`, `runs`, `rungs`, ... whichever holds per-regime numbers), its headline metric `test_acc`.
An experiment can say otherwise with a module constant `COMPARE = SeedSpec(...)`, and add its own paragraph
from the comparisons with a function `seeds_text(comparisons, values) -> str`.
"""

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torchdojo import stats
from torchdojo.errors import DojoError
from torchdojo.report import Report
from torchdojo.runs import Run, RunLock, atomic_write_json, read_metrics

MAX_SEEDS = 100
CONTAINERS = ("regimes", "runs", "rungs", "models", "cells", "variants")  # looked at first, in this order


@dataclasses.dataclass(frozen=True)
class SeedSpec:
    """How a repeated run reads an experiment's summary.json.

    regimes: the summary key holding {regime: {metric: number, ...}} ("" = found automatically; a summary with
    none is one regime, "run"); metric: the headline metric compared between regimes; label: its name in
    sentences; unit "%" for fractions shown as percentages; pairs: which regimes to compare (stats.pairs_of)."""

    regimes: str = ""
    metric: str = "test_acc"
    label: str = "test accuracy"
    higher_is_better: bool = True
    unit: str = "%"
    pairs: stats.Pairs = "all"


def spec_of(module: ModuleType) -> SeedSpec:
    spec = getattr(module, "COMPARE", None)
    return spec if isinstance(spec, SeedSpec) else SeedSpec()


def check_count(n: int) -> int:
    """`--seeds N` must be 1..MAX_SEEDS."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
        raise DojoError(f"--seeds must be a whole number from 1 to {MAX_SEEDS}, got {n!r}", "e.g. --seeds 5")
    return n


def seed_dir(parent: Path, k: int) -> Path:
    return Path(parent) / "seeds" / f"seed-{k}"


# ---------------------------------------------------------------- reading the seeds' summaries


def _numbers(entry: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a nested dict, by dotted key (booleans are not numbers here)."""
    out: dict[str, float] = {}
    for k, v in entry.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_numbers(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def find_regimes(summary: Mapping[str, Any], key: str = "") -> dict[str, Mapping[str, Any]]:
    """{regime: its summary entry}: `summary[key]`, else the first summary entry that is a dict of dicts with
    numbers (CONTAINERS first), else the whole summary as one regime "run"."""
    if key:
        found = summary.get(key)
        if not isinstance(found, Mapping) or not found:
            raise DojoError(f"the seed's summary.json has no {key!r} entry of regimes", "re-run the seed")
        return dict(found)
    keys = [k for k in CONTAINERS if k in summary] + [k for k in summary if k not in CONTAINERS]
    for k in keys:
        v = summary[k]
        if isinstance(v, Mapping) and v and all(isinstance(e, Mapping) and _numbers(e) for e in v.values()):
            return dict(v)
    return {"run": summary}


@dataclasses.dataclass
class SeedResults:
    """What N seeds measured: values[regime][metric] = one value per seed (in seed order, where reported),
    learned[regime] = per seed (True, or the reason it did not learn), and each seed's curves."""

    seeds: list[int]
    values: dict[str, dict[str, list[float]]]
    learned: dict[str, list[bool | str]]
    curves: dict[str, list[list[dict[str, Any]]]]  # regime -> per seed -> its rows (epochs numbered 1..)
    seconds: list[float]  # each seed's run time (its summary's "seconds")


def collect(parent: Path, seeds: Sequence[int], spec: SeedSpec) -> SeedResults:
    """Read every seed folder's summary.json and metrics."""
    values: dict[str, dict[str, list[float]]] = {}
    learned: dict[str, list[bool | str]] = {}
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    seconds: list[float] = []
    for k in range(len(seeds)):
        folder = seed_dir(parent, k)
        summary = _read_summary(folder)
        seconds.append(float(summary.get("seconds", 0.0)))
        regimes = find_regimes(summary, spec.regimes)
        for name, entry in regimes.items():
            for metric, v in _numbers(entry).items():
                values.setdefault(name, {}).setdefault(metric, []).append(v)
            ok = entry.get("learned", True)
            learned.setdefault(name, []).append(True if ok is True else str(entry.get("learned_reason") or "no"))
        rows = read_metrics(folder)
        for name, regime_rows in stage_rows(rows, list(regimes)).items():
            curves.setdefault(name, []).append(regime_rows)
    return SeedResults(list(seeds), values, learned, curves, seconds)


def _read_summary(folder: Path) -> dict[str, Any]:
    """A finished seed's summary.json; unreadable or not a JSON object is a DojoError naming it."""
    path = folder / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DojoError(f"{path} cannot be read ({e})", "delete it and resume: that seed then runs again") from None
    if not isinstance(summary, dict):
        raise DojoError(f"{path} is not a JSON object", "delete it and resume: that seed then runs again")
    return summary


def stage_rows(rows: list[dict[str, Any]], regimes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each regime's metrics rows: its stages (the stage named like it, or starting with its name and '-' or
    '_'; a stage goes to the longest such name) one after another, epochs numbered 1.. across them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        stage = str(r.get("stage", ""))
        owner = _owner(stage, regimes)
        if owner is not None and isinstance(r.get("epoch"), int):
            out.setdefault(owner, []).append(r)
    return {name: [dict(r, epoch=i + 1) for i, r in enumerate(rs)] for name, rs in out.items()}


def _owner(stage: str, regimes: list[str]) -> str | None:
    safe = {name: name.replace(":", "_") for name in regimes}
    exact = [n for n in regimes if stage in (n, safe[n])]
    if exact:
        return exact[0]
    prefixed = [n for n in regimes if any(stage.startswith(safe[n] + sep) for sep in "-_")]
    return max(prefixed, key=len) if prefixed else None


def regime_learned(per_seed: Sequence[bool | str], seeds: Sequence[int]) -> bool | str:
    """True when every seed learned; otherwise which seeds did not, and the first one's reason."""
    failed = [(seeds[i], why) for i, why in enumerate(per_seed) if why is not True]
    if not failed:
        return True
    return f"in {len(failed)} of {len(per_seed)} seeds (seed {failed[0][0]}: {failed[0][1]})"


def aggregate(res: SeedResults, spec: SeedSpec) -> dict[str, Any]:
    """summary.json of the repeated run: per regime per metric {mean, std, low, high, n, values}, learned."""
    out: dict[str, Any] = {}
    for name, metrics in res.values.items():
        entry: dict[str, Any] = {m: stats.estimate(v).to_dict(v) for m, v in metrics.items()}
        ok = regime_learned(res.learned.get(name, []), res.seeds)
        entry.update(stats.learned_entry(ok is True, "learned in every seed" if ok is True else f"did not learn {ok}"))
        out[name] = entry
    return out


def headline(res: SeedResults, spec: SeedSpec) -> dict[str, list[float]]:
    """Each regime's per-seed values of the headline metric (regimes that do not report it are left out)."""
    return {name: m[spec.metric] for name, m in res.values.items() if spec.metric in m}


def comparisons(res: SeedResults, spec: SeedSpec) -> list[stats.Comparison]:
    """The headline metric compared between regimes (pairs as the spec says), failed regimes flagged."""
    values = headline(res, spec)
    if len(values) < 2:
        return []
    learned = {n: regime_learned(res.learned.get(n, []), res.seeds) for n in values}
    return stats.compare(
        values,
        higher_is_better=spec.higher_is_better,
        learned=learned,
        metric=spec.label,
        unit=spec.unit,
        pairs=spec.pairs,
    )


# ---------------------------------------------------------------- the report of the repeated run


def seed_curves(curves: Mapping[str, list[list[dict[str, Any]]]], path: Path, keys: Sequence[str]) -> Path | None:
    """One panel per key (val_acc, val_loss): every seed's curve thin and faint, the mean over seeds bold (at the
    epochs every seed reached), one colour per regime. None when no regime logged any of the keys."""
    from torchdojo.report.figures import _plt, _save

    keys = [k for k in keys if any(k in r for runs in curves.values() for rows in runs for r in rows)]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys, strict=True):
        for i, (name, runs) in enumerate(curves.items()):
            c = colors[i % len(colors)]
            series = [[(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))] for rows in runs]
            series = [s for s in series if s]
            for s in series:
                ax.plot([e for e, _ in s], [v for _, v in s], ".-", color=c, alpha=0.3, lw=0.9, ms=4)
            for e in _stage_starts(runs[0]) if runs else []:
                ax.axvline(e - 0.5, ls=":", lw=1, color=c)
            common = min((len(s) for s in series), default=0)
            if common:
                mean = [sum(s[j][1] for s in series) / len(series) for j in range(common)]
                ax.plot(range(1, common + 1), mean, "-o", ms=3, lw=2, color=c, label=f"{name} (mean of {len(series)})")
        ax.set_xlabel("epoch (all of the regime's stages)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("validation curves: each seed faint, the mean over seeds bold")
    return _save(fig, path)


def _stage_starts(rows: list[dict[str, Any]]) -> list[int]:
    """The epochs (numbered across stages) at which a regime's next stage starts."""
    return [b["epoch"] for a, b in zip(rows, rows[1:], strict=False) if a.get("stage") != b.get("stage")]


def _interval_text(e: Mapping[str, Any], unit: str) -> str:
    fmt = stats.fmt_value
    return f"{fmt(e['low'], unit)} to {fmt(e['high'], unit)}" if e["n"] > 1 else "one seed: none"


def write_report(
    report: Report, run: Run, res: SeedResults, agg: dict[str, Any], cmps: list[stats.Comparison], module: ModuleType
) -> None:
    """The repeated run's report: what ran, the headline metric per regime, failure warnings, the comparisons,
    the experiment's own reading of them, the curves, and every metric's estimate."""
    spec, n = spec_of(module), len(res.seeds)
    report.heading(f"Over {n} seeds")
    report.text(
        f"The experiment ran {n} times, with seeds {', '.join(map(str, res.seeds))}: each seed is a complete run "
        "folder under seeds/seed-K (seed-0 is the first) with its own report. A seed sets the validation split, "
        "initial weights, batch order and augmentation; within a seed every regime shares them, so regimes are "
        "compared seed by seed (a paired 95% t-interval of the per-seed differences)."
    )
    unit = spec.unit
    rows = []
    for name, entry in agg.items():
        e = entry.get(spec.metric)
        if e is None:
            continue
        rows.append(
            {
                "regime": name,
                f"{spec.label} (mean)": stats.fmt_value(e["mean"], unit),
                "std": stats.fmt_diff(e["std"], unit, signed=False),
                "95% interval of the mean": _interval_text(e, unit),
                "seeds": e["n"],
                "per seed": ", ".join(stats.fmt_value(v, unit) for v in e["values"]),
                "learned": "yes" if entry["learned"] else "NO",
            }
        )
    if rows:
        report.table(rows, caption=f"{spec.label} over the seeds")
    for name, entry in agg.items():
        if not entry["learned"]:
            report.warning(f"{name} {entry['learned_reason']}: it is reported as not learned and never called better")
    report.heading("What the seeds support", level=3)
    if cmps:
        report.text(stats.bullet_list(cmps))
    else:
        report.text(f"Fewer than two regimes report {spec.label}: nothing to compare.")
    own = getattr(module, "seeds_text", None)
    if callable(own) and cmps:
        report.text(own(cmps, headline(res, spec)))
    path = seed_curves(res.curves, run.figure_path("seed_curves"), ("val_acc", "val_loss"))
    if path is not None:
        report.figure(
            "seed_curves.png",
            "validation accuracy and loss per epoch: each seed faint, their mean bold; a regime of several stages "
            "is drawn stage after stage, a dotted line where its next stage starts (whose loss is its own)",
        )
    report.table(
        [
            {
                "regime": name,
                "metric": m,
                "mean": e["mean"],
                "std": e["std"],
                "low": e["low"],
                "high": e["high"],
                "n": e["n"],
            }
            for name, entry in agg.items()
            for m, e in entry.items()
            if isinstance(e, dict)
        ],
        caption="every number of the seeds' summaries: mean, std and the 95% interval [low, high] of the mean",
    )


# ---------------------------------------------------------------- running the seeds


def _seed_overrides(overrides: list[str] | dict[str, Any] | None, seed: int) -> list[str]:
    """The user's settings with `seed` replaced by this seed's."""
    items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides or [])
    return [o for o in items if o.partition("=")[0].strip() != "seed"] + [f"seed={seed}"]


def _start(module: ModuleType, name: str, n: int, scale: str, preset: str | None, overrides: Any, root: Path) -> Path:
    """A new repeated run's folder with its config.json (the seeds included) and env.json."""
    from torchdojo.config import to_dict
    from torchdojo.experiments.base import build_config
    from torchdojo.runs import environment, new_run_path

    cfg = build_config(module, scale, preset, overrides)
    base = int(getattr(cfg, "seed", 0))
    parent = new_run_path(name, root)
    parent.mkdir(parents=True, exist_ok=True)
    saved = {
        "experiment": name,
        "scale": scale,
        "preset": preset,
        "overrides": list(overrides or []) if not isinstance(overrides, dict) else overrides,
        "seeds": [base + k for k in range(n)],
        "config": to_dict(cfg),
    }
    atomic_write_json(parent / "config.json", saved)
    atomic_write_json(parent / "env.json", environment())
    return parent


def _resumed(
    module: ModuleType, name: str, parent: Path, n: int | None, scale: Any, preset: Any, overrides: Any
) -> dict:
    from torchdojo.experiments.base import _resumed_config

    _resumed_config(module, name, parent, scale, preset, overrides)  # same experiment and options, or refused
    saved = Run(parent, is_main=False).read_json("config.json")
    if n is not None and n != len(saved["seeds"]):
        raise DojoError(
            f"{parent} was started with --seeds {len(saved['seeds'])}; --resume cannot change it to {n}",
            "resume with the same --seeds (or none), or start a new run",
        )
    return saved


def run_seeds(
    module: ModuleType,
    n: int | None,
    *,
    scale: str | None,
    preset: str | None,
    overrides: list[str] | dict[str, Any] | None,
    runs_root: str | Path,
    resume: str | Path | None,
    verbose: bool,
    **run_opts: Any,
) -> Path:
    """Run `module` once per seed into RUN_DIR/seeds/seed-K (finished seeds are skipped, a cut one resumed), then
    write RUN_DIR's summary.json and report from the seeds' own. `run_opts` go to every seed's run_experiment
    (device, data_dir, download, verify). Returns RUN_DIR."""
    from torchdojo import distributed
    from torchdojo.experiments.base import module_name, run_experiment

    if distributed.env_info().world_size > 1:
        raise DojoError(
            "--seeds runs the seeds one after another in one process, not under torchrun",
            "run it without torchrun, or one seed per torchrun job with --set seed=K",
        )
    name = module_name(module)
    if resume is None:
        parent = _start(module, name, check_count(n or 1), scale or "small", preset, overrides, Path(runs_root))
        saved = Run(parent, is_main=False).read_json("config.json")
    else:
        parent = Path(resume)
        saved = _resumed(module, name, parent, n, scale, preset, overrides)
    if (parent / "summary.json").exists():
        print(f"{parent} already finished; nothing to do", file=sys.stderr, flush=True)
        return parent
    lock = RunLock.acquire(parent)
    try:
        for k, seed in enumerate(saved["seeds"]):
            _one_seed(module, parent, k, seed, saved, verbose, run_opts, run_experiment)
        _finish(module, parent, saved)
    finally:
        lock.release()
    return parent


def _one_seed(
    module: ModuleType, parent: Path, k: int, seed: int, saved: dict, verbose: bool, run_opts: dict, run_experiment: Any
) -> None:
    folder = seed_dir(parent, k)
    total = len(saved["seeds"])
    if (folder / "summary.json").exists():
        if verbose:
            print(f"== seed {k + 1}/{total} (seed {seed}): finished, skipped", file=sys.stderr, flush=True)
        return
    if verbose:
        print(f"== seed {k + 1}/{total} (seed {seed}): {folder}", file=sys.stderr, flush=True)
    if (folder / "config.json").exists():
        run_experiment(module, resume=folder, verbose=verbose, **run_opts)
        return
    run_experiment(
        module,
        scale=saved["scale"],
        preset=saved["preset"],
        overrides=_seed_overrides(saved["overrides"], seed),
        run_dir=folder,
        verbose=verbose,
        **run_opts,
    )


def _finish(module: ModuleType, parent: Path, saved: dict[str, Any]) -> None:
    """The repeated run's report and summary.json (written last: it marks the run finished)."""
    from torchdojo.config import from_dict
    from torchdojo.experiments.base import module_name, report_title

    seeds, spec = saved["seeds"], spec_of(module)
    title = report_title(module, from_dict(module.Config, saved["config"]))
    res = collect(parent, seeds, spec)
    agg = aggregate(res, spec)
    cmps = comparisons(res, spec)
    run = Run(parent)
    report = Report(f"torchdojo {module_name(module)}: {title} ({len(seeds)} seeds)")
    write_report(report, run, res, agg, cmps, module)
    run.close()
    summary = {
        "seeds": seeds,
        "metric": spec.metric,
        "regimes": agg,
        "comparisons": [c.to_dict() for c in cmps],
        "seconds": round(sum(res.seconds), 2),  # the seeds' own, however many sessions they took
    }
    report.save(parent, summary)  # its summary table: these very numbers
    atomic_write_json(parent / "summary.json", summary)
