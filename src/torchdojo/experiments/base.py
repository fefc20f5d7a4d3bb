"""What every experiment shares: the context it runs in and the function that runs one end to end.

An experiment is a module with `MISSION_IDS`, `SUMMARY`, a dataclass `Config`, `SCALES` (overrides
for smoke/small/full), optional `PRESETS`, optional `UNUSED` ({dotted key: why} for settings of its
`TrainConfig` groups that none of its stages reads: setting one is an error), and `run(cfg, ctx) -> dict`
(the summary numbers).

The settings contract: a config resolves as built-in default < scale < preset < stage (rung) default <
the user's `--set`; a stage gets its `TrainConfig` from `ctx.train_config(defaults, group)`, which
re-applies the user's settings on top of the stage's own, and `fit` records what each stage trained with
in config.json's `stages`.
"""

import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from torchdojo import distributed, progress
from torchdojo.config import SCALES, TrainConfig, apply_overrides, from_dict, parse_overrides, to_dict
from torchdojo.data import Splits, load_dataset
from torchdojo.errors import DojoError
from torchdojo.report import Report
from torchdojo.runs import Run, RunLock, atomic_write_json, environment, new_run_path, write_error


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; asking for cuda without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DojoError("--device cuda was asked for but no CUDA device is available", "use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise DojoError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N")
    return torch.device(name)


class RankRun(Run):
    """The run folder as a rank other than 0 sees it under torchrun: checkpoints are read from the shared
    folder (for resume and the best weights); figures and reports go to a private scratch folder."""

    def __init__(self, shared: Path, rank: int):
        super().__init__(Path(tempfile.mkdtemp(prefix=f"torchdojo-rank{rank}-")), is_main=False)
        self.shared = Path(shared)

    def checkpoint_dir(self, stage: str) -> Path:
        return self.shared / "checkpoints" / stage

    def read_json(self, name: str) -> Any:
        return Run(self.shared, is_main=False).read_json(name)

    def close(self, finished: bool = False) -> None:
        super().close(finished)
        shutil.rmtree(self.path, ignore_errors=True)


@dataclasses.dataclass
class Context:
    """Where an experiment runs: its run folder, report, device and data options."""

    run: Run
    report: Report
    device: torch.device
    data_dir: Path | None = None
    download: bool = False
    verify: bool = True
    resume: bool = False
    verbose: bool = True
    config: Any = None  # the experiment's resolved Config
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # the user's settings, parsed

    def load_data(self, name: str, classes: list[str] | tuple[str, ...] | None = None) -> Splits:
        # Under torchrun with --download, rank 0 fetches first; the others then find the files.
        wait_for_rank0 = self.download and distributed.is_initialized() and not distributed.is_main()
        if wait_for_rank0:
            distributed.barrier()
        with progress.phase(f"loading {name}", enabled=self.verbose and self.run.is_main):
            splits = load_dataset(name, self.data_dir, download=self.download, verify=self.verify, classes=classes)
        if self.download and distributed.is_main():
            distributed.barrier()
        return splits

    def log(self, msg: str) -> None:
        if self.verbose and self.run.is_main:
            print(msg, file=sys.stderr, flush=True)

    def train_config(self, defaults: dict[str, Any] | None = None, group: str = "train") -> TrainConfig:
        """The `TrainConfig` of one stage: the experiment's `group` (default, scale, preset and user settings
        resolved), then the stage's own `defaults`, then the user's `group.*` settings again: the user wins."""
        base: TrainConfig = getattr(self.config, group)
        tcfg = apply_overrides(base, defaults or {}, prefix=f"{group}.")
        mine = {k.partition(".")[2]: v for k, v in self.overrides.items() if k.partition(".")[0] == group}
        return apply_overrides(tcfg, mine, prefix=f"{group}.")


def build_config(
    module: ModuleType,
    scale: str = "small",
    preset: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Any:
    """Config() with the scale's overrides, then the preset's, then the user's `--set` ones.

    A user setting that the experiment declares unused (`module.UNUSED`) is refused, naming the key."""
    if scale not in SCALES:
        raise DojoError(f"unknown scale {scale!r}", f"use one of {', '.join(SCALES)}")
    cfg = module.Config()
    cfg = apply_overrides(cfg, module.SCALES.get(scale, {}))
    presets = getattr(module, "PRESETS", {})
    if preset is not None:
        if preset not in presets:
            known = ", ".join(presets) or "none"
            raise DojoError(f"unknown preset {preset!r} for {module_name(module)}", f"presets: {known}")
        cfg = apply_overrides(cfg, presets[preset].get(scale, presets[preset].get("all", {})))
    user = parse_overrides(overrides)
    if "seeds" in user:
        raise DojoError("seeds is not a setting: repeated runs are asked for with --seeds N", "use --seeds N")
    unused = getattr(module, "UNUSED", {})
    for key in user:
        if key in unused:
            raise DojoError(
                f"{key} is not used by experiment {module_name(module)}: {unused[key]}", f"remove --set {key}=..."
            )
    return apply_overrides(cfg, user)


def report_title(module: ModuleType, cfg: Any) -> str:
    """What the report is about: the experiment's `title(cfg)` (true to this run's dataset and settings) when it
    has one, else its SUMMARY."""
    title = getattr(module, "title", None)
    return title(cfg) if callable(title) else module.SUMMARY


def module_name(module: ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[-1].replace("_", "-")


def run_experiment(
    module: ModuleType,
    *,
    scale: str | None = None,
    preset: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
    runs_root: str | Path = "runs",
    resume: str | Path | None = None,
    verbose: bool = True,
    is_main: bool = True,
    seeds: int | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Run `module` end to end into a new (or, with `resume`, an existing) run folder; returns its path.

    `seeds` N > 1 runs it N times into RUN_DIR/seeds/seed-K and reports over the seeds (`torchdojo.seeds`);
    resuming such a folder resumes its seeds. `run_dir`: a new run's exact folder (default: a new one under
    `runs_root`). Launched by torchrun, every process calls this: it joins the process group (see
    `torchdojo.distributed`), rank 0 picks and writes the run folder, the others follow it.
    """
    name = module_name(module)
    if _repeated(resume, seeds):
        from torchdojo.seeds import run_seeds

        opts = {"device": device, "data_dir": data_dir, "download": download, "verify": verify}
        return run_seeds(
            module,
            seeds,
            scale=scale,
            preset=preset,
            overrides=overrides,
            runs_root=runs_root,
            resume=resume,
            verbose=verbose,
            **opts,
        )
    dev, owns_group = distributed.init_from_env(resolve_device(device))
    try:
        path = _run(
            module,
            name,
            scale,
            preset,
            overrides,
            dev,
            data_dir,
            download,
            verify,
            runs_root,
            resume,
            verbose,
            is_main and distributed.is_main(),
            run_dir,
        )
    except BaseException:
        if owns_group:  # no barrier: the other ranks may wait in a collective; torchrun stops them
            torch.distributed.destroy_process_group()
        raise
    if owns_group:
        distributed.shutdown()
    return path


def _repeated(resume: str | Path | None, seeds: int | None) -> bool:
    """Whether this is a repeated run: `--seeds N` (N > 1) for a new run, or a resumed folder started so. A single
    run's folder cannot be resumed as a repeated one."""
    from torchdojo.seeds import check_count

    if seeds is not None:
        check_count(seeds)
    if resume is None:
        return (seeds or 1) > 1
    try:
        repeated = "seeds" in json.loads((Path(resume) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False  # not a run folder: _resumed_config says so
    if not repeated and seeds not in (None, 1):
        raise DojoError(
            f"{resume} is a single run; --resume cannot make it a --seeds {seeds} run",
            "resume it without --seeds, or start a new run with --seeds N",
        )
    return repeated


def _resumed_config(
    module: ModuleType,
    name: str,
    run_dir: Path,
    scale: str | None,
    preset: str | None,
    overrides: list[str] | dict[str, Any] | None,
) -> tuple[Any, str, str | None, list[str] | dict[str, Any]]:
    """The config, scale, preset and user settings a run folder was started with. New settings given with
    --resume are refused (a resumed run cannot silently ignore them), as is a folder of another experiment."""
    if not (run_dir / "config.json").exists():
        raise DojoError(f"{run_dir} is not a run folder (no config.json)", "pass the folder printed by `run`")
    saved = Run(run_dir, is_main=False).read_json("config.json")
    if saved.get("experiment") != name:
        raise DojoError(
            f"{run_dir} is a run of {saved.get('experiment')!r}, not {name!r}",
            f"resume it with: torchdojo run {saved.get('experiment')} --resume {run_dir}",
        )
    asked = {
        "--scale": (scale, saved.get("scale")),
        "--preset": (preset, saved.get("preset")),
        "--set/--rungs": (list(overrides) if overrides else None, saved.get("overrides") or None),
    }
    for flag, (given, was) in asked.items():
        if given is not None and given != was:
            raise DojoError(
                f"{run_dir} was started with {flag} {was}; --resume cannot change it to {given}",
                "resume with the same options (or none), or start a new run without --resume",
            )
    return (
        from_dict(module.Config, saved["config"]),
        saved.get("scale", scale),
        saved.get("preset"),
        saved.get("overrides") or [],
    )


def _run(
    module: ModuleType,
    name: str,
    scale: str,
    preset: str | None,
    overrides: list[str] | dict[str, Any] | None,
    dev: torch.device,
    data_dir: str | Path | None,
    download: bool,
    verify: bool,
    runs_root: str | Path,
    resume: str | Path | None,
    verbose: bool,
    is_main: bool,
    given_dir: str | Path | None = None,
) -> Path:
    if resume is not None:
        run_dir = Path(resume)
        cfg, scale, preset, overrides = _resumed_config(module, name, run_dir, scale, preset, overrides)
    else:
        scale = scale or "small"
        cfg = build_config(module, scale, preset, overrides)
        named = Path(given_dir) if given_dir is not None else new_run_path(name, runs_root)
        run_dir = distributed.broadcast_object(named)  # rank 0 names the folder
    new_root = None if resume is not None else (Path(given_dir).parent if given_dir is not None else Path(runs_root))
    lock, finished = _claim(run_dir, name, new_root, is_main)
    if finished:
        if is_main:
            print(f"{run_dir} already finished; nothing to do", file=sys.stderr, flush=True)
        return run_dir
    try:
        return _run_in(
            module,
            name,
            scale,
            preset,
            overrides,
            cfg,
            run_dir,
            dev,
            data_dir,
            download,
            verify,
            resume is not None,
            verbose,
            is_main,
        )
    except OSError as e:  # a full disk, a read-only or foreign runs directory: say which path and what to do
        err = write_error(e, run_dir, _carry_on(name, run_dir), new_root)
        if err is None:
            raise
        raise err from None
    finally:
        if lock is not None:
            lock.release()


def _claim(run_dir: Path, name: str, new_root: Path | None, is_main: bool) -> tuple[RunLock | None, bool]:
    """Rank 0 makes (for a new run) and locks the run folder, for the whole run; returns the lock and whether
    the run (resumed) had already finished, which then leaves the folder untouched. Every rank raises the same
    DojoError when rank 0 is refused (another process writes the folder; it cannot be written)."""
    lock, finished, refusal = None, False, None
    if is_main:
        try:
            finished = new_root is None and (run_dir / "summary.json").exists()
            if not finished:
                if new_root is not None:
                    run_dir.mkdir(parents=True, exist_ok=True)
                lock = RunLock.acquire(run_dir)
                finished = new_root is None and (run_dir / "summary.json").exists()  # finished while we looked
        except DojoError as e:
            refusal = (e.problem, e.fix)
        except OSError as e:
            if new_root is not None:  # the new folder, if made, is empty: take it away again
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
            err = write_error(e, run_dir, _carry_on(name, run_dir), new_root)
            if err is None:
                raise
            refusal = (err.problem, err.fix)
    finished, refusal = distributed.broadcast_object((finished, refusal))  # every rank stops together
    if lock is not None and (finished or refusal):
        lock.release()
        lock = None
    if refusal:
        raise DojoError(*refusal)
    return lock, finished


def _carry_on(name: str, run_dir: Path) -> str:
    """How to go on once a write error is fixed: resume when the folder is a run folder, else start again."""
    if (run_dir / "config.json").exists():
        return f"resume it: torchdojo run {name} --resume {run_dir} (what was checkpointed is kept)"
    return "run the same command again"


def _run_in(
    module: ModuleType,
    name: str,
    scale: str,
    preset: str | None,
    overrides: list[str] | dict[str, Any] | None,
    cfg: Any,
    run_dir: Path,
    dev: torch.device,
    data_dir: str | Path | None,
    download: bool,
    verify: bool,
    resumed: bool,
    verbose: bool,
    is_main: bool,
) -> Path:
    """The run itself, in its (locked) folder."""
    run: Run | None = None
    try:
        run = Run(run_dir, is_main=is_main, verbose=verbose)
        env = {**environment(dev), "world_size": distributed.world_size()} if is_main else {}
        if is_main and not resumed:
            config = {"experiment": name, "scale": scale, "preset": preset, "overrides": overrides or []}
            atomic_write_json(run.path / "config.json", {**config, "config": to_dict(cfg)})
            atomic_write_json(run.path / "env.json", env)
        elif is_main:  # a resumed run keeps its folder's record of how it was started
            for change in run.repair():  # rows of epochs no checkpoint holds, temp files a kill left
                if verbose:
                    print(f"resume: {change}", file=sys.stderr, flush=True)
            atomic_write_json(run.path / "env.resumed.json", env)
        if not is_main and distributed.is_initialized():
            run = RankRun(run.path, distributed.rank())
        report = Report(f"torchdojo {name}: {report_title(module, cfg)}")
        ctx = Context(
            run,
            report,
            dev,
            Path(data_dir) if data_dir else None,
            download,
            verify,
            resumed,
            verbose,
            cfg,
            parse_overrides(overrides),
        )
        torch.manual_seed(getattr(cfg, "seed", 0))
        start = time.perf_counter()
        summary = module.run(cfg, ctx)
    except BaseException:
        if run is not None:
            run.close()
        if is_main and not resumed:
            _discard_if_empty(run_dir)
        raise
    run.close(finished=True)  # TensorBoard's end-of-run records first
    summary = dict(summary or {})
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if is_main:  # summary.json last: it marks the run finished (a resume then does nothing)
        with progress.phase("writing report.html", enabled=verbose):
            report.save(run.path, summary)  # the report's summary table: these very numbers
        atomic_write_json(run.path / "summary.json", summary)
    return run.shared if isinstance(run, RankRun) else run.path


def _discard_if_empty(path: Path) -> None:
    """Remove a new run folder that failed before producing anything (no metrics, checkpoint or figure):
    a bad dataset name or a missing dataset should not leave half-made folders behind."""
    import shutil

    kept = ("config.json", "env.json", RunLock.NAME)
    produced = [p for p in path.rglob("*") if p.is_file() and p.name not in kept]
    if path.exists() and not produced:
        shutil.rmtree(path, ignore_errors=True)
