"""The training engine: plain `train_one_epoch`, `evaluate` and `fit` functions.

`fit` checkpoints every epoch (full state in `last.pt`, best weights in `best.pt`, both written
atomically), resumes exactly from `last.pt`, stops early, and stops on a NaN/inf loss keeping the
last good checkpoint. Callbacks observe each epoch (figures, feature maps); they never change the maths.

Under torchrun (see `torchdojo.distributed`) `fit` trains through DistributedDataParallel, metrics are
summed over ranks, and only rank 0 writes checkpoints. On CUDA `fit` uses bf16 autocast (`train.amp`) and,
with `train.compile`, torch.compile; on CPU the maths is plain fp32 and bit-reproducible.
"""

import contextlib
import copy
import ctypes
import dataclasses
import functools
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from torchdojo import distributed
from torchdojo.config import TrainConfig, to_dict
from torchdojo.errors import CheckpointError, DojoError, TrainingDiverged
from torchdojo.fusion import fused_bn_relu_pool
from torchdojo.optim import build_optimizer, build_scheduler
from torchdojo.runs import Run, atomic_torch_save, load_checkpoint
from torchdojo.steps import (
    LossFn,
    Step,
    StepOutput,
    as_step,
    batch_len,
    classification,
    cross_entropy,
    select_rows,
    to_device,
    xy_step,
)

__all__ = [
    "Batches",
    "EpochCallback",
    "FitResult",
    "LossFn",
    "Step",
    "StepOutput",
    "classification",
    "cross_entropy",
    "evaluate",
    "fit",
    "keep_freed_memory",
    "load_best",
    "to_device",
    "train_one_epoch",
    "xy_step",
]


class Batches(Protocol):
    def __iter__(self) -> Any: ...
    def __len__(self) -> int: ...


class EpochCallback(Protocol):
    def __call__(self, epoch: int, row: dict[str, Any], model: nn.Module) -> None: ...


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc reuse freed activation buffers instead of returning them to the OS (once per process).

    By default glibc serves blocks over 128 KiB-32 MiB from fresh `mmap` pages and unmaps them on free, so a
    CPU training step that allocates ~10 MB activations pays a page fault per 4 KiB page, every step (the
    `sys` time of a run). Raising the mmap and trim thresholds keeps those blocks in the heap for reuse:
    ~5-10% of a small CNN's step on 2 cores. It changes the whole process, so the library never calls it:
    the CLI does, and a script may (`torchdojo.engine.keep_freed_memory()`). No effect (False) off glibc or
    with TORCHDOJO_MALLOPT=0."""
    if os.environ.get("TORCHDOJO_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN autotuning (fixed shapes: it picks its fastest kernels) for this block only, then as before."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=True,
    )
    p.start()
    p.add_task(desc, total=total, info="")
    return p


def _sums_to_means(
    loss_sum: torch.Tensor, sums: dict[str, torch.Tensor], n: int | torch.Tensor, device: torch.device
) -> tuple[dict[str, float], int]:
    """Means of the summed loss and metrics; under DDP summed over all ranks first (one all-reduce)."""
    names = sorted(sums)
    if distributed.is_initialized():
        count = torch.as_tensor(n, dtype=torch.float64, device=device).reshape(())
        vec = torch.stack([loss_sum.double(), count, *(sums[k].double() for k in names)])
        vec = distributed.all_reduce_sum(vec)
        loss_sum, n = vec[0], int(vec[1].item())
        sums = {k: vec[2 + i] for i, k in enumerate(names)}
    n = int(n)
    out = {"loss": float(loss_sum.item()) / max(n, 1)}
    out.update({k: float(sums[k].item()) / max(n, 1) for k in names})
    return out, n


def _accumulate(sums: dict[str, torch.Tensor], key: str, value: Any, device: torch.device, dtype: torch.dtype) -> None:
    """sums[key] += value, in place on the device (no allocation and no sync per step)."""
    if key not in sums:
        sums[key] = torch.zeros((), dtype=dtype, device=device)
    sums[key].add_(torch.as_tensor(value, device=device).detach())


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    step: Step | LossFn | None = None,
    *,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float = 0.0,
    max_batches: int = 0,
    progress: str = "",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    fuse: bool = True,
    loss_fn: LossFn | None = None,
) -> dict[str, Any]:
    """One pass over `batches`; returns the mean loss, the mean of each metric the step gives, n and seconds.

    `step(model, batch) -> StepOutput` (default: cross-entropy on (x, y) batches); `loss_fn(model, x, y)`
    is the older (x, y) form. On CPU, `fuse` runs BN -> ReLU -> max-pool blocks as one op
    (`torchdojo.fusion`; same maths)."""
    step = as_step(step, loss_fn)
    with fused_bn_relu_pool(model, enabled=fuse and device.type == "cpu"):
        return _train_one_epoch(
            model,
            batches,
            optimizer,
            step,
            device,
            scheduler,
            grad_clip,
            max_batches,
            progress,
            autocast_dtype,
            channels_last,
        )


def _train_one_epoch(
    model: nn.Module,
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    step: Step,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    grad_clip: float,
    max_batches: int,
    progress: str,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
) -> dict[str, Any]:
    model.train()
    total = len(batches) if hasattr(batches, "__len__") else 0  # type: ignore[arg-type]
    if max_batches:
        total = min(total, max_batches) if total else max_batches
    bar = _progress(total, progress, bool(progress))
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for i, batch in enumerate(itertools.islice(batches, max_batches or None)):  # no batch drawn past the cap
        batch = to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += out.loss.detach().float() * out.count
        for k, v in out.metrics.items():
            _accumulate(sums, k, v, device, torch.float64)
        n += int(out.count)
        # Check now and then (a sync per step is costly on GPU); under DDP every rank must stop together.
        if i % 25 == 0 and distributed.any_rank(not bool(torch.isfinite(loss_sum)), device):
            break
        if bar is not None:
            bar.update(bar.task_ids[0], advance=1, info=f"loss {out.loss.item():.4f}" if i % 10 == 0 else None)
    if bar is not None:
        bar.stop()
    means, n = _sums_to_means(loss_sum, sums, n, device)
    return {**means, "n": n, "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    step: Step | LossFn | None = None,
    *,
    device: torch.device,
    loss_fn: LossFn | None = None,
    max_batches: int = 0,
    return_outputs: bool = False,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    fuse: bool = True,
) -> dict[str, Any]:
    """Mean loss and the mean of each metric over `batches`; with `return_outputs`, also probabilities and
    targets (from the step's outputs/targets). Default step: cross-entropy on (x, y) batches.

    On CPU, `fuse` runs BN -> ReLU -> max-pool blocks as one op (`torchdojo.fusion`; same maths)."""
    step = as_step(step, loss_fn)
    with fused_bn_relu_pool(model, enabled=fuse and device.type == "cpu"):
        return _evaluate(model, batches, device, step, max_batches, return_outputs, autocast_dtype, channels_last)


def _evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device,
    step: Step,
    max_batches: int,
    return_outputs: bool,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
) -> dict[str, Any]:
    model.eval()
    # Sums stay on the device (one sync at the end, not one per batch); float64 is Python's float maths.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    sums: dict[str, torch.Tensor] = {}
    n = 0
    probs, targets, where = [], [], []
    shard, seen = distributed.shard_positions(batches), 0
    for batch in itertools.islice(batches, max_batches or None):
        if shard is not None:  # DDP: drop the padding that evened out the shards, so each sample counts once
            size = batch_len(batch)
            pos = shard[0][seen : seen + size]
            seen += size
            keep = pos < shard[1]
            if not keep.all():
                batch, pos = select_rows(batch, keep, size), pos[keep]
            if not keep.any():
                continue
        batch = to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = step(model, batch)
        loss_sum += out.loss.detach().float().double() * out.count
        for k, v in out.metrics.items():
            _accumulate(sums, k, v, device, torch.float64)
        n += int(out.count)
        if return_outputs and out.outputs is not None:
            probs.append(out.outputs.float().softmax(1).cpu())
            targets.append(out.targets.cpu())
            if shard is not None:
                where.append(pos)
    means, n = _sums_to_means(loss_sum, sums, n, device)
    result: dict[str, Any] = {**means, "n": n}
    if return_outputs:
        result["probs"] = torch.cat(probs) if probs else torch.empty(0)
        result["targets"] = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
        if distributed.is_initialized():  # every rank gets all outputs, in the epoch's order when known
            result = distributed.gather_outputs(result, where if shard is not None else None, device)
    return result


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


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches | None,
    cfg: TrainConfig,
    *,
    device: torch.device,
    stage: str = "main",
    run: Run | None = None,
    resume: bool = False,
    params: Sequence[nn.Parameter] | list[dict] | None = None,
    step: Step | None = None,
    val_step: Step | None = None,
    loss_fn: LossFn | None = None,
    val_loss_fn: LossFn | None = None,
    callbacks: Sequence[EpochCallback] = (),
    until: Callable[[dict[str, Any]], bool] | None = None,
    verbose: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> FitResult:
    """Train `model` for `cfg.epochs`, keep the best weights by `cfg.monitor`, restore them at the end.

    `step(model, batch) -> StepOutput` is the objective on one batch of any type (default: cross-entropy on
    (x, y) batches with `cfg.label_smoothing`); `val_step` the one for validation (default: `step`).
    `loss_fn`/`val_loss_fn` are the same for (x, y) batches in the `(model, x, y) -> (loss, logits)` form.
    `params` restricts what the optimizer sees (e.g. only the head for a frozen backbone).
    `until(row)` ends training after the first epoch whose row satisfies it (a target reached).
    With `run`, the config this stage trains with goes to config.json's `stages`, checkpoints to
    run/checkpoints/<stage>/ and each epoch's row to metrics.jsonl.
    `autocast_dtype` None means: bf16 on CUDA when `cfg.amp`, fp32 otherwise.
    Without `val`, the best epoch is the one with the lowest training loss.
    """
    custom_objective = step is not None or loss_fn is not None or params is not None
    step = as_step(step, loss_fn, cfg.label_smoothing)
    val_step = val_step or (xy_step(val_loss_fn) if val_loss_fn is not None else step)
    if cfg.label_smoothing and not getattr(step, "uses_label_smoothing", False):
        raise DojoError(
            f"train.label_smoothing={cfg.label_smoothing} has no effect on stage {stage!r}: its loss "
            "is not a cross-entropy over labels",
            "leave train.label_smoothing at 0 for this stage",
        )
    if autocast_dtype is None and cfg.amp and device.type == "cuda":
        autocast_dtype = torch.bfloat16
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # only 4-D weights change layout
    trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg)
    steps = min(len(train), cfg.max_batches) if cfg.max_batches else len(train)
    scheduler = build_scheduler(optimizer, cfg, steps)
    if run is not None and run.is_main:
        run.record_stage(stage, to_dict(cfg))
    _audit(stage, cfg, optimizer, scheduler, train, val)
    loop = _Loop(
        model,
        train,
        val,
        cfg,
        device,
        stage,
        run,
        optimizer,
        scheduler,
        step,
        val_step,
        _training_objective(model, step, cfg, device, find_unused=custom_objective),
        callbacks,
        until,
        verbose and distributed.is_main(),
        autocast_dtype,
    )
    with _cudnn_benchmark(device.type == "cuda"):  # fixed shapes: let cuDNN pick its fastest kernels
        if resume:
            loop.resume()
        loop.train()
    return loop.result()


def _audit(
    stage: str,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: Batches,
    val: Batches | None,
) -> None:
    """Called by `fit` with everything a stage trains with, before its first epoch. A no-op: tests replace it
    to check that the settings a user gave are the ones that run."""


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
        tr = train_one_epoch(
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
            va = evaluate(
                self.model,
                self.val_b,
                self.val_step,
                device=self.device,
                max_batches=cfg.max_batches,
                autocast_dtype=self.autocast_dtype,
                channels_last=cfg.channels_last,
                fuse=self.fuse,
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


def _training_objective(
    model: nn.Module, step: Step, cfg: TrainConfig, device: torch.device, find_unused: bool
) -> Step:
    """`step` as the training loop sees it: through DDP under torchrun, compiled with `cfg.compile`.

    The wrappers hold `model` and never replace it, so checkpoints keep plain state-dict keys (no
    `module.` or `_orig_mod.` prefix). Without either, `step` is returned as it is.
    """
    if not distributed.is_initialized() and not cfg.compile:
        return step
    # Custom objectives (or a restricted optimizer) may leave parameters out of the graph: DDP must look.
    objective = distributed.Objective(model, step)
    wrapped: nn.Module = distributed.wrap(objective, device, find_unused_parameters=find_unused)
    if cfg.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]

    def through_wrappers(_model: nn.Module, batch: Any) -> StepOutput:
        loss, count, metrics, outputs, targets = wrapped(batch)
        return StepOutput(loss, count, metrics, outputs, targets)

    return through_wrappers


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """What rebuilds `model` from its checkpoint (registry name, options, input shape, classes, preprocessing):
    the plain dict `build_model` (or an experiment) left on it as `torchdojo_spec`, else None."""
    spec = getattr(model, "torchdojo_spec", None)
    return dict(spec) if isinstance(spec, dict) else None


def load_best(model: nn.Module, run_dir: Path, stage: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load `stage`'s best weights from a run folder into `model`; returns the checkpoint's metrics."""
    state = load_checkpoint(Path(run_dir) / "checkpoints" / stage / "best.pt", map_location=device)
    model.load_state_dict(state["model"])
    return state.get("metrics", {})
