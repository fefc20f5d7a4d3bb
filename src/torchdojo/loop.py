"""The state of one `fit` call (`_Loop`): epochs, best weights, early stopping, checkpoints and exact resume.

Every epoch writes `last.pt` (full state: weights, optimizer, schedule, RNG, history, early-stopping counters)
and, when the monitored value improves, `best.pt` (weights), both atomically and only on rank 0. A resume
continues from `last.pt` exactly; its stage's metrics rows past that epoch are dropped and run again.
"""

import copy
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from torchdojo import distributed, epochs
from torchdojo.config import TrainConfig
from torchdojo.errors import CheckpointError, DojoError, TrainingDiverged
from torchdojo.runs import Run, atomic_torch_save, load_checkpoint
from torchdojo.steps import Step


class Batches(Protocol):
    def __iter__(self) -> Any: ...
    def __len__(self) -> int: ...


class EpochCallback(Protocol):
    def __call__(self, epoch: int, row: dict[str, Any], model: nn.Module) -> None: ...


@dataclasses.dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_value: float
    seconds_per_epoch: float
    stopped_early: bool = False


def _better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if monitor.endswith("acc") else value < best


_LAST_KEYS = "model optimizer scheduler epoch history rng_cpu best_value best_epoch bad_epochs".split()


class _Loop:
    """The state of one `fit` call: epochs, best weights, early stopping, checkpoints and resume."""

    def __init__(
        self,
        model: nn.Module,
        train: Batches,
        val: Batches | None,
        cfg: TrainConfig,
        device: torch.device,
        stage: str,
        run: Run | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        step: Step,
        val_step: Step,
        train_step: Step,
        callbacks: Sequence[EpochCallback],
        until: Callable[[dict[str, Any]], bool] | None,
        verbose: bool,
        autocast_dtype: torch.dtype | None,
    ):
        self.model, self.train_b, self.val_b, self.cfg, self.device = model, train, val, cfg, device
        self.stage, self.run, self.optimizer, self.scheduler = stage, run, optimizer, scheduler
        self.step, self.val_step, self.train_step = step, val_step, train_step
        self.callbacks, self.until, self.verbose, self.autocast_dtype = callbacks, until, verbose, autocast_dtype
        self.fuse = cfg.cpu_fusion and not cfg.compile  # a compiled step would recompile for the swapped modules
        self.ckpt_dir = run.checkpoint_dir(stage) if run is not None else None
        self.writes = run is not None and run.is_main
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch = self.bad_epochs = self.start_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_early = False

    def resume(self) -> None:
        """Continue exactly from last.pt (weights, optimizer, schedule, RNG, history), when there is one.

        The stage's metrics rows past last.pt's epoch are dropped (those epochs run again); without a last.pt
        (killed between the stage's first row and its first checkpoint) all of them are."""
        if self.ckpt_dir is None:
            return
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            if self.writes:
                self.run.metrics.truncate(self.stage, 0)
            return
        state = load_checkpoint(path, map_location=self.device)
        missing = [k for k in _LAST_KEYS if k not in state]
        if missing:
            raise CheckpointError(
                f"checkpoint {path} is not a last.pt of torchdojo's fit (it lacks {', '.join(missing)})",
                f"put the stage's own last.pt back, or delete {self.ckpt_dir} to train stage {self.stage!r} "
                "again from its first epoch on --resume",
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(list(state["rng_cuda"]))
        self.start_epoch, self.history = state["epoch"], state["history"]
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.bad_epochs, self.stopped_early = state["bad_epochs"], state.get("stopped", False)
        if self.writes:
            self.run.metrics.truncate(self.stage, self.start_epoch)  # rows of the interrupted epoch are redone
        if self.verbose:
            print(f"[{self.stage}] resumed after epoch {self.start_epoch}", file=sys.stderr)

    def train(self) -> None:
        cfg = self.cfg
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            if self.stopped_early or (cfg.early_stop_patience and self.bad_epochs >= cfg.early_stop_patience):
                self.stopped_early = True
                break
            row = self.epoch(epoch)
            self.stopped_early = bool(self.until is not None and self.until(row))
            self.keep_best(epoch, row)
            for cb in self.callbacks:
                cb(epoch, row, self.model)
            if self.run is not None:
                self.run.metrics.log(row)
            self.save_last(epoch)
            if self.verbose:
                msg = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_")))
                print(f"[{self.stage}] epoch {epoch}/{cfg.epochs} {msg} ({row['seconds']:.1f}s)", file=sys.stderr)

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch and validate; the epoch's row (stage, epoch, train_*, val_*, lr, seconds)."""
        cfg, stage = self.cfg, self.stage
        for b in (self.train_b, self.val_b):
            if b is not None and hasattr(b, "set_epoch"):
                b.set_epoch(epoch)
        tr = epochs.train_one_epoch(
            self.model,
            self.train_b,
            self.optimizer,
            self.train_step,
            device=self.device,
            scheduler=self.scheduler,
            grad_clip=cfg.grad_clip,
            max_batches=cfg.max_batches,
            progress=f"[{stage}] epoch {epoch}/{cfg.epochs}" if self.verbose else "",
            autocast_dtype=self.autocast_dtype,
            channels_last=cfg.channels_last,
            fuse=self.fuse,
        )
        if not math.isfinite(tr["loss"]):
            raise TrainingDiverged(
                f"[{stage}] the training loss became {tr['loss']} in epoch {epoch}; stopped. The last good "
                f"checkpoint (epoch {epoch - 1}) is kept" + (f" in {self.ckpt_dir}" if self.ckpt_dir else ""),
                "lower the learning rate (--set train.lr=...), add gradient clipping "
                "(--set train.grad_clip=1) or check the inputs for NaN",
            )
        distributed.broadcast_buffers(self.model)  # every rank evaluates and keeps the same model as rank 0
        row: dict[str, Any] = {"stage": stage, "epoch": epoch}
        row.update({f"train_{k}": v for k, v in tr.items() if k not in ("n", "seconds")})
        if self.val_b is not None:
            va = epochs.evaluate(
                self.model,
                self.val_b,
                self.val_step,
                device=self.device,
                max_batches=cfg.max_batches,
                autocast_dtype=self.autocast_dtype,
                channels_last=cfg.channels_last,
                fuse=self.fuse,
                progress=f"[{stage}] validating epoch {epoch}/{cfg.epochs}" if self.verbose else "",
            )
            row.update({f"val_{k}": v for k, v in va.items() if k != "n"})
        row.update(lr=self.optimizer.param_groups[0]["lr"], seconds=tr["seconds"])
        self.history.append(row)
        return row

    def monitored(self, row: dict[str, Any]) -> float:
        monitor = self.cfg.monitor
        if self.val_b is None:  # no validation split: the lowest training loss
            return -row["train_loss"] if monitor.endswith("acc") else row["train_loss"]
        if monitor not in row:
            logged = ", ".join(k for k in row if k.startswith("val_"))
            raise DojoError(
                f"train.monitor={monitor} is not measured by stage {self.stage!r} (it logs {logged})",
                f"pick one of those, e.g. --set train.monitor={logged.split(', ')[0]}",
            )
        return row[monitor]

    def keep_best(self, epoch: int, row: dict[str, Any]) -> None:
        value = self.monitored(row)
        if not _better(value, self.best_value, self.cfg.monitor):
            self.bad_epochs += 1
            return
        self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        if self.ckpt_dir is not None and self.writes:
            atomic_torch_save(
                {"model": self.model.state_dict(), "epoch": epoch, "metrics": row, "spec": model_spec(self.model)},
                self.ckpt_dir / "best.pt",
            )
        else:
            self.best_state = copy.deepcopy(self.model.state_dict())

    def save_last(self, epoch: int) -> None:
        if self.ckpt_dir is None or not self.writes:
            return
        atomic_torch_save(
            {
                "model": self.model.state_dict(),
                "spec": model_spec(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epoch,
                "history": self.history,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "stopped": self.stopped_early,
            },
            self.ckpt_dir / "last.pt",
        )

    def result(self) -> FitResult:
        """Restore the best weights (under DDP once rank 0 has written them) and sum up."""
        distributed.barrier()
        if self.ckpt_dir is not None and (self.ckpt_dir / "best.pt").exists():
            self.model.load_state_dict(load_checkpoint(self.ckpt_dir / "best.pt", map_location=self.device)["model"])
        elif self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        secs = [r["seconds"] for r in self.history]
        mean_secs = sum(secs) / max(len(secs), 1)
        return FitResult(self.history, self.best_epoch, float(self.best_value or 0.0), mean_secs, self.stopped_early)


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """What rebuilds `model` from its checkpoint (registry name, options, input shape, classes, preprocessing):
    the plain dict `build_model` (or an experiment) left on it as `torchdojo_spec`, else None."""
    spec = getattr(model, "torchdojo_spec", None)
    return dict(spec) if isinstance(spec, dict) else None
