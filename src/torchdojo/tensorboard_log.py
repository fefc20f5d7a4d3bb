"""TensorBoard for a run folder: RUN_DIR/tensorboard/<stage>/, one TensorBoard run per stage (so the curves of
a ladder's rungs overlay), plus RUN_DIR/tensorboard/figures/ for the run's figures.

What each stage's run holds:
- per epoch, every number of its metrics.jsonl row: `train/loss`, `train/acc`, `val/loss`, `val/acc`, `lr`,
  `seconds` (a row's `train_X`/`val_X` is tagged `train/X`/`val/X`), at step = epoch;
- when the run finishes: `test/X` (what the experiment reported through `Run.log_test`), `best/val_X` (the
  validation metrics of the best epoch by the stage's `train.monitor`, and `best/epoch`), `final/val_X` (those
  of the last epoch; `train_X` for a stage without validation), and the HParams plugin's record of the stage:
  its resolved TrainConfig from config.json's `stages` with those metrics.

TensorBoard is kept equal to metrics.jsonl: the epoch scalars live in `*.epochs` event files that are written
again from metrics.jsonl whenever a stage's rows change (a resume drops the rows of epochs it re-runs), and the
end-of-run records in `*.final` files rewritten by every finish, so no value is ever there twice.
TensorBoard is optional at run time: without it nothing is written.
"""

import math
import re
import sys
from pathlib import Path
from typing import Any

EPOCHS, FINAL = ".epochs", ".final"  # event file suffixes: per-epoch scalars, end-of-run records
FIGURES = "figures"  # the TensorBoard run that holds the figures


def available() -> bool:
    """Whether torch's TensorBoard writer can be imported (the `tensorboard` package is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def run_name(stage: str) -> str:
    """A stage's folder under tensorboard/: its name with anything but letters, digits, '.', '_', '-' as '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stage).lstrip(".")
    return name or "_"


def tag(key: str) -> str:
    """A metrics row's key as a TensorBoard tag: train_loss -> train/loss, val_acc -> val/acc, lr -> lr."""
    for split in ("train", "val", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1 :]}"
    return key


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The row's numeric values (not `epoch`, not booleans) by tag."""
    return {
        tag(k): float(v)
        for k, v in row.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def best_row(rows: list[dict[str, Any]], monitor: str) -> dict[str, Any] | None:
    """The row `fit` kept as best: the first with the highest `monitor` (an accuracy) or the lowest (else);
    without that key (no validation split) the lowest training loss."""
    key = monitor if any(monitor in r for r in rows) else "train_loss"
    scored = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not scored:
        return None
    sign = -1.0 if key == monitor and monitor.endswith("acc") else 1.0
    return min(scored, key=lambda r: sign * r[key])  # min keeps the first of equals, as fit does


def hparam_values(train_config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """A TrainConfig dict as HParams values: numbers, booleans and strings as they are, lists joined by ','."""
    out: dict[str, bool | int | float | str] = {}
    for k, v in sorted(train_config.items()):
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = ",".join(map(str, v))
        else:
            out[k] = "none" if v is None else str(v)
    return out


def stage_summary(
    rows: list[dict[str, Any]], monitor: str, test: dict[str, float]
) -> tuple[dict[str, float], dict[str, int]]:
    """The end-of-run metrics of a stage (`best/...`, `final/...`, `test/...`) and the step of each."""
    metrics: dict[str, float] = {}
    steps: dict[str, int] = {}
    best, last = best_row(rows, monitor), (rows[-1] if rows else None)
    split = "val" if any(k.startswith("val_") for r in rows for k in r) else "train"
    for name, row in (("best", best), ("final", last)):
        if row is None:
            continue
        for k, v in row.items():
            if k.startswith(split + "_") and isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics[f"{name}/{k}"], steps[f"{name}/{k}"] = float(v), int(row.get("epoch", 0))
    if best is not None:
        metrics["best/epoch"], steps["best/epoch"] = float(best.get("epoch", 0)), int(best.get("epoch", 0))
    for k, v in test.items():
        metrics[f"test/{k}"] = float(v)
        steps[f"test/{k}"] = int(best.get("epoch", 0)) if best is not None else 0
    return metrics, steps


class TensorBoardLog:
    """The writers of RUN_DIR/tensorboard/: one per (stage, kind of file), opened on first use."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._writers: dict[tuple[str, str], Any] = {}
        self.test: dict[str, dict[str, float]] = {}

    def _writer(self, run: str, suffix: str) -> Any:
        if (run, suffix) not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[run, suffix] = SummaryWriter(str(self.root / run), filename_suffix=suffix)
        return self._writers[run, suffix]

    def _drop(self, run: str, suffix: str) -> None:
        """Close the writer of (run, suffix) and delete its event files: they are about to be written again."""
        writer = self._writers.pop((run, suffix), None)
        if writer is not None:
            writer.close()
        for f in (self.root / run).glob(f"events.out.tfevents.*{suffix}"):
            f.unlink(missing_ok=True)

    def epoch(self, row: dict[str, Any]) -> None:
        """One epoch's row, as scalars of its stage's run at step = epoch."""
        w = self._writer(run_name(str(row.get("stage", "main"))), EPOCHS)
        step = int(row.get("epoch", 0))
        for k, v in numbers(row).items():
            w.add_scalar(k, v, step)
        w.flush()

    def rewrite(self, rows: list[dict[str, Any]], stages: set[str]) -> None:
        """Write the epoch scalars of `stages` again from `rows` (metrics.jsonl as it now is)."""
        for stage in sorted(stages):
            self._drop(run_name(stage), EPOCHS)
            for row in rows:
                if row.get("stage", "main") == stage:
                    self.epoch(row)

    def log_test(self, stage: str, metrics: dict[str, float]) -> None:
        """Test metrics of `stage`, written (as `test/X`) when the run finishes; a second call replaces them."""
        self.test[stage] = {k: float(v) for k, v in metrics.items()}

    def finish(self, rows: list[dict[str, Any]], stages: dict[str, dict[str, Any]], figures: list[Path]) -> None:
        """The end-of-run records: per stage (config.json's `stages`: name -> TrainConfig dict) its test, best
        and final metrics and its HParams session; every figure (PNG) as an image of the `figures` run."""
        from torch.utils.tensorboard.summary import hparams

        for stage, train_config in stages.items():
            name = run_name(stage)
            self._drop(name, FINAL)
            mine = [r for r in rows if r.get("stage") == stage]
            metrics, steps = stage_summary(mine, str(train_config.get("monitor", "val_loss")), self.test.get(stage, {}))
            w = self._writer(name, FINAL)
            for k, v in metrics.items():
                w.add_scalar(k, v, steps[k])
            for summary in hparams(hparam_values(train_config), metrics):
                w.file_writer.add_summary(summary)
            w.flush()
        self._drop(FIGURES, FINAL)
        if figures:
            import numpy as np
            from PIL import Image

            w = self._writer(FIGURES, FINAL)
            for path in figures:
                try:
                    with Image.open(path) as img:
                        pixels = np.asarray(img.convert("RGB"))
                except OSError as e:  # not an image PIL reads: the figure stays in figures/ and the report
                    print(
                        f"warning: {path} is not in TensorBoard: it cannot be read as an image ({e})", file=sys.stderr
                    )
                    continue
                w.add_image(path.stem, pixels, 0, dataformats="HWC")
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
