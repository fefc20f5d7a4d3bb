"""The training engine: plain `train_one_epoch`, `evaluate` and `fit` functions.

`fit` checkpoints every epoch (full state in `last.pt`, best weights in `best.pt`, both written
atomically), resumes exactly from `last.pt`, stops early, and stops on a NaN/inf loss keeping the
last good checkpoint. Callbacks observe each epoch (figures, feature maps); they never change the maths.

Under torchrun (see `torchdojo.distributed`) `fit` trains through DistributedDataParallel, metrics are
summed over ranks, and only rank 0 writes checkpoints. On CUDA `fit` uses bf16 autocast (`train.amp`) and,
with `train.compile`, torch.compile; on CPU the maths is plain fp32 and bit-reproducible.

Split by concept: one pass over batches is `torchdojo.epochs`, the state of a fit (epochs, best weights,
checkpoints, resume) is `torchdojo.loop`, a step is `torchdojo.steps`; this module is `fit` and names them all.
"""

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchdojo import distributed
from torchdojo.config import TrainConfig, to_dict
from torchdojo.epochs import evaluate, train_one_epoch
from torchdojo.errors import DojoError
from torchdojo.loop import Batches, EpochCallback, FitResult, _Loop, model_spec
from torchdojo.optim import build_optimizer, build_scheduler
from torchdojo.runs import Run, load_checkpoint
from torchdojo.steps import (
    LossFn,
    Step,
    StepOutput,
    as_step,
    classification,
    cross_entropy,
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
    "model_spec",
    "to_device",
    "train_one_epoch",
    "xy_step",
]


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


def load_best(model: nn.Module, run_dir: Path, stage: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load `stage`'s best weights from a run folder into `model`; returns the checkpoint's metrics."""
    state = load_checkpoint(Path(run_dir) / "checkpoints" / stage / "best.pt", map_location=device)
    model.load_state_dict(state["model"])
    return state.get("metrics", {})
