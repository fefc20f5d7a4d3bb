"""The run folder: resolved config, environment, metrics, checkpoints, figures and the report.

runs/<experiment>/<timestamp>-<id>/
    config.json      resolved config (what `--set` produced), with the experiment name and seed
    env.json         package versions, device, git revision, command line
    metrics.jsonl    one JSON line per (stage, epoch); metrics.csv the same as a table
    tb/              TensorBoard event files
    checkpoints/     <stage>/best.pt and <stage>/last.pt (full state, for --resume)
    figures/         PNG figures
    summary.json     the experiment's final numbers
    report.json      the report's blocks; report.html is rendered from it and the figures
"""

import csv
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from torchdojo.errors import CheckpointError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temp file and a rename, so a kill never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a truncated or corrupt file is a clear CheckpointError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist", "check the run folder path") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError for damaged files
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "it is truncated or corrupt",
            f"delete {path} and resume from an earlier checkpoint, or start a new run without --resume",
        ) from None


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
    """Appends one row per epoch to metrics.jsonl, metrics.csv and TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = run_dir
        self.enabled = enabled
        self._tb = None

    def _writer(self) -> Any:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = False
        return self._tb

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        tb = self._writer()
        if tb:
            stage, step = row.get("stage", "main"), row.get("epoch", 0)
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    tb.add_scalar(f"{stage}/{k}", v, step)
            tb.flush()

    def _write_csv(self) -> None:
        rows = read_metrics(self.run_dir)
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.run_dir / "metrics.csv")

    def truncate(self, stage: str, after_epoch: int) -> None:
        """Drop rows of `stage` past `after_epoch` (used on resume: those epochs are re-run)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        rows = [r for r in read_metrics(self.run_dir) if not (r.get("stage") == stage and r["epoch"] > after_epoch)]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        self._write_csv()

    def close(self) -> None:
        if self._tb:
            self._tb.close()


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


class Run:
    """A run folder and the writers that fill it. Only the main process (rank 0) writes."""

    def __init__(self, path: Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        if is_main:
            for sub in ("checkpoints", "figures"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLogger(self.path, enabled=is_main)

    @classmethod
    def create(cls, experiment: str, root: Path | str = "runs", is_main: bool = True) -> "Run":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return cls(Path(root) / experiment / f"{stamp}-{secrets.token_hex(3)}", is_main=is_main)

    def figure_path(self, name: str) -> Path:
        return self.path / "figures" / f"{name}.png"

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

    def close(self) -> None:
        self.metrics.close()
