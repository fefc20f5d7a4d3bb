"""The run folder: resolved config, environment, metrics, checkpoints, figures and the report.

runs/<experiment>/<timestamp>-<id>/
    config.json      resolved config (what `--set` produced), with the experiment name and seed
    env.json         package versions, device, git revision, command line
    metrics.jsonl    one JSON line per (stage, epoch); metrics.csv the same as a table
    tensorboard/     one TensorBoard run per stage (<stage>/) and the figures (figures/); see tensorboard_log
    checkpoints/     <stage>/best.pt and <stage>/last.pt (full state, for --resume)
    figures/         PNG figures
    summary.json     the experiment's final numbers
    report.json      the report's blocks; report.html is rendered from it and the figures
    .lock            while a process writes the folder: its pid, host and start time (see `RunLock`)

Integrity: one writer at a time (`RunLock`); every file but metrics.jsonl (appended) is replaced through a
uniquely named temp file and a rename (`atomic_write_bytes`), with the mode the umask gives; on resume
`Run.repair` drops the metrics rows of epochs that no checkpoint holds (and writes TensorBoard again from what
is kept) and the temp files a kill left.
"""

import collections
import contextlib
import csv
import errno
import functools
import io
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from torchdojo.errors import CheckpointError, DojoError
from torchdojo.runlock import RunLock, locked  # noqa: F401  (re-exported: the lock lives in runlock.py)


@functools.cache
def _umask() -> int:
    """The process umask, read once. On Linux from /proc (reading it with os.umask means setting it, which
    another thread could see for a moment); elsewhere set and restored once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain open() gives a new file: 0o666 less the umask (mkstemp's files are 0600)."""
    return 0o666 & ~_umask()


def _new_temp(path: Path) -> tuple[int, str]:
    """A uniquely named temp file next to `path` (so the rename stays on one filesystem), with the umask's
    mode; its name (.NAME.XXXXXXXX.tmp) is what `Run.repair` recognises as an orphan."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX (Windows has no such modes)
            os.fchmod(fd, file_mode())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see a partial file."""
    fd, tmp = _new_temp(path)
    try:
        with _naming(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError without a file name (a write to an open file: a full disk) gets `path` as its name."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temp file and a rename, so a kill never leaves a truncated checkpoint."""
    fd, tmp = _new_temp(path)
    os.close(fd)
    try:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's zip writer reports a full disk as "unexpected pos ...", no errno
            if shutil.disk_usage(path.parent).free < 16 << 20:  # measured with the partial temp file still there
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
            raise
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a missing, empty, truncated or corrupt file is a clear
    CheckpointError naming it. `mmap`: map the tensors instead of reading them (to look at a few fields)."""
    path = Path(path)
    redo = (
        f"delete the stage's checkpoint folder {path.parent} and run the same `torchdojo run ... --resume "
        "RUN_DIR` again (that stage then restarts from its first epoch; the others keep theirs), "
        "or start a new run without --resume"
    )
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist", "check the run folder path") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror})", "check the run folder") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it is truncated or corrupt", redo)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except PermissionError as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({e.strerror})", f"make it readable (chmod u+r {path})"
        ) from None
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError for damaged files
        first = (str(e).strip().splitlines() or [""])[0][:120]  # some say nothing: str(e) == ""
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}{': ' + first if first else ''}); "
            "it is truncated or corrupt",
            redo,
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a torchdojo checkpoint", redo)
    return state


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except Exception:
        return None


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, device and git revision: what is needed to reproduce a run."""
    import torchvision

    import torchdojo

    env: dict[str, Any] = {
        "torchdojo": torchdojo.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "device": str(device) if device is not None else None,
        "git_revision": git_revision(),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return env


class MetricsLogger:
    """Appends one row per epoch to metrics.jsonl, metrics.csv and TensorBoard (`torchdojo.tensorboard_log`)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = run_dir
        self.enabled = enabled
        self._tb: Any = None

    def _writer(self) -> Any:
        """The run's TensorBoardLog, or False when TensorBoard is not installed (it is optional at run time)."""
        if self._tb is None:
            from torchdojo import tensorboard_log

            self._tb = (
                tensorboard_log.TensorBoardLog(self.run_dir / "tensorboard") if tensorboard_log.available() else False
            )
        return self._tb

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.run_dir / "metrics.jsonl"
        with _naming(path), open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        tb = self._writer()
        if tb:
            tb.epoch(row)

    def _write_csv(self) -> None:
        self._rewrite_csv(read_metrics(self.run_dir))

    def _rewrite_csv(self, rows: list[dict[str, Any]]) -> None:
        """metrics.csv from `rows` (the columns: every key, in first-seen order); unchanged bytes are not rewritten."""
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        data, path = buf.getvalue().encode(), self.run_dir / "metrics.csv"
        if not (path.exists() and path.read_bytes() == data):
            atomic_write_bytes(path, data)

    def keep(self, rows: list[dict[str, Any]]) -> None:
        """Make metrics.jsonl and metrics.csv hold exactly `rows` (files already so are left as they are)."""
        path = self.run_dir / "metrics.jsonl"
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        before = read_metrics(self.run_dir)
        if path.exists() and path.read_bytes() != data:
            atomic_write_bytes(path, data)
        if path.exists() or (self.run_dir / "metrics.csv").exists():
            self._rewrite_csv(rows)
        changed = {s for s in _stages(before + rows) if _of(before, s) != _of(rows, s)}
        if changed:
            self.rewrite_tensorboard(rows, changed)

    def rewrite_tensorboard(self, rows: list[dict[str, Any]], stages: set[str] | None = None) -> None:
        """TensorBoard's epoch scalars of `stages` (default: every stage in `rows`) written again from `rows`,
        so that a re-run epoch is never there twice."""
        tb = self._writer() if self.enabled else False
        if tb:
            tb.rewrite(rows, _stages(rows) if stages is None else stages)

    def truncate(self, stage: str, after_epoch: int) -> None:
        """Drop rows of `stage` past `after_epoch` (used on resume: those epochs are re-run)."""
        if not (self.run_dir / "metrics.jsonl").exists():
            return
        rows = read_metrics(self.run_dir)
        self.keep([r for r in rows if not (r.get("stage") == stage and r.get("epoch", 0) > after_epoch)])

    def log_test(self, stage: str, metrics: dict[str, float]) -> None:
        tb = self._writer() if self.enabled else False
        if tb:
            tb.log_test(stage, metrics)

    def finish(self, stages: dict[str, dict[str, Any]], figures: list[Path]) -> None:
        """TensorBoard's end-of-run records (test, best and final metrics, hparams per stage; the figures)."""
        tb = self._writer() if self.enabled else False
        if tb:
            tb.finish(read_metrics(self.run_dir), stages, figures)

    def close(self) -> None:
        if self._tb:
            self._tb.close()


def _stages(rows: list[dict[str, Any]]) -> set[str]:
    return {str(r.get("stage", "main")) for r in rows}


def _of(rows: list[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    return [r for r in rows if str(r.get("stage", "main")) == stage]


def read_metrics(run_dir: Path, stage: str | None = None) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: ignore it
                continue
    return [r for r in rows if stage is None or r.get("stage") == stage]


def new_run_path(experiment: str, root: Path | str = "runs") -> Path:
    """A new run folder's path (not created): runs/<experiment>/<timestamp>-<random id>."""
    return Path(root) / experiment / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


_CURRENT: list[Path] = []  # the folder of the run this process writes (the latest Run made on rank 0)


def current_run() -> Path | None:
    """The folder of the latest run this process started writing (rank 0), for the interrupt message's
    resume command; None before any."""
    return _CURRENT[-1] if _CURRENT else None


class Run:
    """A run folder and the writers that fill it. Only the main process (rank 0) writes.

    `verbose`: announce each figure as it is drawn (`torchdojo.progress.status`)."""

    def __init__(self, path: Path, is_main: bool = True, verbose: bool = False):
        self.path = Path(path)
        self.is_main, self.verbose = is_main, verbose and is_main
        if is_main:
            for sub in ("checkpoints", "figures"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            _CURRENT[:] = [self.path]
        self.metrics = MetricsLogger(self.path, enabled=is_main)

    @classmethod
    def create(cls, experiment: str, root: Path | str = "runs", is_main: bool = True) -> "Run":
        return cls(new_run_path(experiment, root), is_main=is_main)

    def figure_path(self, name: str) -> Path:
        """Where figure `name` goes (figures/NAME.png); asking for it announces that it is being drawn."""
        if self.verbose:
            from torchdojo import progress

            progress.status(f"drawing figures/{name}.png")
        return self.path / "figures" / f"{name}.png"

    def log_test(self, stage: str, metrics: dict[str, float]) -> None:
        """Test-set metrics of `stage` (e.g. {"acc": 0.91, "loss": 0.27}, of the weights it keeps): TensorBoard
        shows them as `test/X` in the stage's run and beside its hyper-parameters when the run finishes."""
        self.metrics.log_test(stage, metrics)

    def checkpoint_dir(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_main:
            atomic_write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def record_stage(self, stage: str, train_config: dict[str, Any]) -> None:
        """Write the config a stage trains with into config.json's `stages` map (what ran, not what was asked)."""
        if not self.is_main:
            return
        path = self.path / "config.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        saved.setdefault("stages", {})[stage] = train_config
        atomic_write_json(path, saved)

    def repair(self) -> list[str]:
        """Bring an interrupted run folder back to a state a resume continues from (call it holding the
        `RunLock`): metrics rows of epochs past their stage's last.pt are dropped (all of a stage's rows when it
        has no last.pt yet: killed between its first row and its first checkpoint), as are lines cut by a kill;
        temp files of interrupted atomic writes are deleted. Every checkpoint is checked first (a damaged one is
        a CheckpointError naming it), so nothing changes unless everything can be read. Returns what was done."""
        rows = read_metrics(self.path)
        stages = list(dict.fromkeys(r["stage"] for r in rows if isinstance(r.get("stage"), str)))
        done: dict[str, int] = {}
        for stage in stages:
            last = self.checkpoint_dir(stage) / "last.pt"
            done[stage] = int(load_checkpoint(last, mmap=True).get("epoch", 0)) if last.exists() else 0
        for best in sorted(self.path.glob("checkpoints/**/best.pt")):
            load_checkpoint(best, mmap=True)
        keep = [r for r in rows if r.get("stage") not in done or r.get("epoch", 0) <= done[r["stage"]]]
        dropped = collections.Counter(r["stage"] for r in rows if r.get("stage") in done) - collections.Counter(
            r["stage"] for r in keep if r.get("stage") in done
        )
        changes = [
            f"dropped {n} metrics row(s) of stage {s} "
            + (f"past its checkpoint (epoch {done[s]})" if done[s] else "(it had no checkpoint yet)")
            for s, n in dropped.items()
        ]
        self.metrics.keep(keep)
        self.metrics.rewrite_tensorboard(keep)  # whatever a kill left there: TensorBoard = metrics.jsonl
        for tmp in orphan_temp_files(self.path):
            tmp.unlink(missing_ok=True)
            changes.append(f"removed the temp file {tmp.relative_to(self.path)} of an interrupted write")
        return changes

    def close(self, finished: bool = False) -> None:
        """Close the writers; `finished` (the experiment returned): first TensorBoard's end-of-run records."""
        from torchdojo import progress

        if finished and self.is_main:
            progress.status("writing tensorboard/ (test metrics, hyper-parameters, figures)", enabled=self.verbose)
            path = self.path / "config.json"
            stages = json.loads(path.read_text()).get("stages", {}) if path.exists() else {}
            self.metrics.finish(stages, sorted((self.path / "figures").glob("*.png")))
        progress.status(None, enabled=self.verbose)
        self.metrics.close()


def orphan_temp_files(run_dir: Path) -> list[Path]:
    """Temp files of atomic writes (.NAME.XXXX.tmp, and the older .NAME.tmp / .NAME.tmp.png) under `run_dir`."""
    return sorted(
        p
        for p in Path(run_dir).rglob(".*")
        if (p.name.endswith(".tmp") or ".tmp." in p.name) and p.is_file() and not p.is_symlink()
    )


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(e: OSError, run_dir: Path, again: str, runs_root: Path | None = None) -> DojoError | None:
    """`e` as a DojoError naming the path when it is a run folder that cannot be written (disk full, read-only,
    not yours); None for any other error. `again`: how to carry on once it is fixed (resume or rerun);
    `runs_root`: the runs directory of a new run (None: a resumed one)."""
    where = Path(e.filename) if isinstance(e.filename, (str, os.PathLike)) else Path(run_dir)
    what = os.strerror(e.errno) if e.errno else str(e)
    target, full = Path(os.path.abspath(where)), Path(os.path.abspath(run_dir))
    inside = target == full or target in full.parents or full in target.parents
    existing = next((d for d in [target, *target.parents] if d.is_dir()), target)  # a folder `df`/`chmod` can take
    if e.errno in _NO_SPACE:
        disk = f" (the disk holding the run folder {run_dir} is full)" if inside else " (its disk is full)"
        return DojoError(
            f"cannot write {where}: {what}{disk}", f"free some space there (df -h {existing}), then {again}"
        )
    if e.errno not in _NOT_WRITABLE or not inside:
        return None  # not the run folder (a dataset, a cache): not ours to explain
    if runs_root is not None:  # a new run
        why = "the runs directory is read-only or not yours"
        fix = f"give --runs-dir a folder you can write (now {runs_root}), or make it writable (chmod u+w {existing})"
    else:
        why = "the run folder is read-only or not yours"
        fix = (
            f"make the run folder writable (chmod -R u+w {run_dir}), or copy it somewhere writable and resume the copy"
        )
    return DojoError(f"cannot write {where}: {what} ({why})", f"{fix}; then {again}")
