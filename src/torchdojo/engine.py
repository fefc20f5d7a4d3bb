"""The training engine: plain `train_one_epoch`, `evaluate` and `fit` functions.

`fit` checkpoints every epoch (full state in `last.pt`, best weights in `best.pt`, both written
atomically), resumes exactly from `last.pt`, stops early, and stops on a NaN/inf loss keeping the
last good checkpoint. Callbacks observe each epoch (figures, feature maps); they never change the maths.

Under torchrun (see `torchdojo.distributed`) `fit` trains through DistributedDataParallel, metrics are
summed over ranks, and only rank 0 writes checkpoints. On CUDA `fit` uses bf16 autocast (`train.amp`) and,
with `train.compile`, torch.compile; on CPU the maths is plain fp32 and bit-reproducible.
"""

import copy
import ctypes
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo import distributed
from torchdojo.config import TrainConfig
from torchdojo.errors import TrainingDiverged
from torchdojo.fusion import fused_bn_relu_pool
from torchdojo.optim import build_optimizer, build_scheduler
from torchdojo.runs import Run, atomic_torch_save, load_checkpoint

# (model, x, y) -> (loss, logits or None); logits give the accuracy
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class Batches(Protocol):
    def __iter__(self) -> Any: ...
    def __len__(self) -> int: ...


class EpochCallback(Protocol):
    def __call__(self, epoch: int, row: dict[str, Any], model: nn.Module) -> None: ...


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return step


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc reuse freed activation buffers instead of returning them to the OS (once per process).

    By default glibc serves blocks over 128 KiB-32 MiB from fresh `mmap` pages and unmaps them on free, so a
    CPU training step that allocates ~10 MB activations pays a page fault per 4 KiB page, every step (the
    `sys` time of a run). Raising the mmap and trim thresholds keeps those blocks in the heap for reuse:
    ~5-10% of a small CNN's step on 2 cores. No effect (False) off glibc or with TORCHDOJO_MALLOPT=0."""
    if os.environ.get("TORCHDOJO_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                 TextColumn("{task.fields[info]}"), transient=True)
    p.start()
    p.add_task(desc, total=total, info="")
    return p


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    *,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float = 0.0,
    max_batches: int = 0,
    progress: str = "",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    fuse: bool = True,
) -> dict[str, float]:
    """One pass over `batches`; returns mean loss, accuracy (if the loss gives logits) and seconds.

    On CPU, `fuse` runs BN -> ReLU -> max-pool blocks as one op (`torchdojo.fusion`; same maths)."""
    with fused_bn_relu_pool(model, enabled=fuse and device.type == "cpu"):
        return _train_one_epoch(model, batches, optimizer, loss_fn, device, scheduler, grad_clip, max_batches,
                                progress, autocast_dtype, channels_last)


def _train_one_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     optimizer: torch.optim.Optimizer, loss_fn: LossFn, device: torch.device,
                     scheduler: torch.optim.lr_scheduler.LRScheduler | None, grad_clip: float, max_batches: int,
                     progress: str, autocast_dtype: torch.dtype | None, channels_last: bool) -> dict[str, float]:
    model.train()
    total = len(batches) if hasattr(batches, "__len__") else 0  # type: ignore[arg-type]
    if max_batches:
        total = min(total, max_batches) if total else max_batches
    bar = _progress(total, progress, bool(progress))
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for i, (x, y) in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss, logits = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().float() * len(y)
        if logits is not None:
            correct += (logits.detach().argmax(1) == y).sum()
        n += len(y)
        # Check now and then (a sync per step is costly on GPU); under DDP every rank must stop together.
        if i % 25 == 0 and distributed.any_rank(not bool(torch.isfinite(loss_sum)), device):
            break
        if bar is not None:
            bar.update(bar.task_ids[0], advance=1, info=f"loss {loss.item():.4f}" if i % 10 == 0 else None)
    if bar is not None:
        bar.stop()
    if distributed.is_initialized():  # sums over ranks: the metrics of the whole global batch
        count = torch.tensor(float(n), device=device, dtype=torch.float64)
        sums = distributed.all_reduce_sum(torch.stack([loss_sum.double(), correct.double(), count]))
        loss_sum, correct, n = sums[0], sums[1], int(sums[2].item())
    mean_loss = (loss_sum / max(n, 1)).item()
    seconds = time.perf_counter() - start
    return {"loss": mean_loss, "acc": correct.item() / max(n, 1), "n": n, "seconds": seconds}


def _shard_positions(batches: Any) -> tuple[torch.Tensor, int] | None:
    """Under DDP: where this rank's samples sit in the epoch (padding: >= total), if `batches` tells."""
    if not distributed.is_initialized() or not hasattr(batches, "positions"):
        return None
    return batches.positions(), int(batches.num_global)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    loss_fn: LossFn | None = None,
    max_batches: int = 0,
    return_outputs: bool = False,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    fuse: bool = True,
) -> dict[str, Any]:
    """Mean loss and accuracy over `batches`; with `return_outputs`, also probabilities and targets.

    On CPU, `fuse` runs BN -> ReLU -> max-pool blocks as one op (`torchdojo.fusion`; same maths)."""
    with fused_bn_relu_pool(model, enabled=fuse and device.type == "cpu"):
        return _evaluate(model, batches, device, loss_fn, max_batches, return_outputs, autocast_dtype,
                         channels_last)


def _evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
              loss_fn: LossFn | None, max_batches: int, return_outputs: bool, autocast_dtype: torch.dtype | None,
              channels_last: bool) -> dict[str, Any]:
    model.eval()
    loss_fn = loss_fn or cross_entropy()
    # Sums stay on the device (one sync at the end, not one per batch); float64 is Python's float maths.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    probs, targets, where = [], [], []
    shard, seen = _shard_positions(batches), 0
    for i, (x, y) in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        if shard is not None:  # DDP: drop the padding that evened out the shards, so each image counts once
            pos = shard[0][seen : seen + len(y)]
            seen += len(y)
            keep = pos < shard[1]
            if not keep.all():
                x, y, pos = x[keep.to(x.device)], y[keep.to(y.device)], pos[keep]
            if len(y) == 0:
                continue
        x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss, logits = loss_fn(model, x, y)
        loss_sum += loss.detach().float().double() * len(y)
        n += len(y)
        if logits is not None:
            correct += (logits.argmax(1) == y).sum()
            if return_outputs:
                probs.append(logits.float().softmax(1).cpu())
                targets.append(y.cpu())
                if shard is not None:
                    where.append(pos)
    if distributed.is_initialized():
        count = torch.tensor(float(n), dtype=torch.float64, device=device)
        sums = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double(), count]))
        loss_sum, correct, n = sums[0], sums[1].long(), int(sums[2].item())
    out: dict[str, Any] = {"loss": loss_sum.item() / max(n, 1), "acc": int(correct.item()) / max(n, 1), "n": n}
    if return_outputs:
        out["probs"] = torch.cat(probs) if probs else torch.empty(0)
        out["targets"] = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
        if distributed.is_initialized():  # every rank gets all outputs, in the epoch's order when known
            out = _gather_outputs(out, where if shard is not None else None, device)
    return out


def _gather_outputs(out: dict[str, Any], where: list[torch.Tensor] | None,
                    device: torch.device) -> dict[str, Any]:
    """All ranks' probabilities and targets; sorted back into the epoch's order when positions are known."""
    k = out["probs"].shape[1] if out["probs"].ndim == 2 else 0
    k = int(distributed.all_gather_cat(torch.tensor([k], device=device)).max().item())  # a rank may have none
    probs = distributed.all_gather_cat(out["probs"].reshape(-1, k).to(device)).cpu()
    targets = distributed.all_gather_cat(out["targets"].to(device)).cpu()
    if where is not None:
        pos = torch.cat(where) if where else torch.empty(0, dtype=torch.long)
        order = distributed.all_gather_cat(pos.to(device)).cpu().argsort()
        probs, targets = probs[order], targets[order]
    return {**out, "probs": probs, "targets": targets}


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
    loss_fn: LossFn | None = None,
    val_loss_fn: LossFn | None = None,
    callbacks: Sequence[EpochCallback] = (),
    verbose: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> FitResult:
    """Train `model` for `cfg.epochs`, keep the best weights by `cfg.monitor`, restore them at the end.

    `params` restricts what the optimizer sees (e.g. only the head for a frozen backbone).
    With `run`, checkpoints go to run/checkpoints/<stage>/ and each epoch's row to metrics.jsonl.
    `autocast_dtype` None means: bf16 on CUDA when `cfg.amp`, fp32 otherwise.
    """
    custom_objective = loss_fn is not None or params is not None
    loss_fn = loss_fn or cross_entropy(cfg.label_smoothing)
    val_loss_fn = val_loss_fn or loss_fn
    verbose = verbose and distributed.is_main()
    if autocast_dtype is None and cfg.amp and device.type == "cuda":
        autocast_dtype = torch.bfloat16
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # only 4-D weights change layout
    if device.type == "cpu":
        keep_freed_memory()
    fuse = cfg.cpu_fusion and not cfg.compile  # a compiled step would recompile for the swapped modules
    train_loss_fn = _training_objective(model, loss_fn, cfg, device, find_unused=custom_objective)
    trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg)
    steps = min(len(train), cfg.max_batches) if cfg.max_batches else len(train)
    scheduler = build_scheduler(optimizer, cfg, steps)
    ckpt_dir = run.checkpoint_dir(stage) if run is not None else None
    history: list[dict[str, Any]] = []
    best_value, best_epoch, bad_epochs, start_epoch = None, 0, 0, 0
    best_state: dict[str, torch.Tensor] | None = None

    if resume and ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
        state = load_checkpoint(ckpt_dir / "last.pt", map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(list(state["rng_cuda"]))
        start_epoch, history = state["epoch"], state["history"]
        best_value, best_epoch, bad_epochs = state["best_value"], state["best_epoch"], state["bad_epochs"]
        if run.is_main:
            run.metrics.truncate(stage, start_epoch)  # rows of the epoch that was interrupted are redone
        if verbose:
            print(f"[{stage}] resumed after epoch {start_epoch}", file=sys.stderr)

    stopped_early = False
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if cfg.early_stop_patience and bad_epochs >= cfg.early_stop_patience:
            stopped_early = True
            break
        for b in (train, val):
            if b is not None and hasattr(b, "set_epoch"):
                b.set_epoch(epoch)
        tr = train_one_epoch(model, train, optimizer, train_loss_fn, device=device, scheduler=scheduler,
                             grad_clip=cfg.grad_clip, max_batches=cfg.max_batches,
                             progress=f"[{stage}] epoch {epoch}/{cfg.epochs}" if verbose else "",
                             autocast_dtype=autocast_dtype, channels_last=cfg.channels_last, fuse=fuse)
        if not (torch.isfinite(torch.tensor(tr["loss"]))):
            raise TrainingDiverged(
                f"[{stage}] the training loss became {tr['loss']} in epoch {epoch}; stopped. The last good "
                f"checkpoint (epoch {epoch - 1}) is kept" + (f" in {ckpt_dir}" if ckpt_dir else ""),
                "lower the learning rate (--set train.lr=...), add gradient clipping "
                "(--set train.grad_clip=1) or check the inputs for NaN",
            )
        distributed.broadcast_buffers(model)  # every rank evaluates and keeps the same model as rank 0
        row: dict[str, Any] = {"stage": stage, "epoch": epoch, "train_loss": tr["loss"],
                               "train_acc": tr["acc"]}
        if val is not None:
            va = evaluate(model, val, device=device, loss_fn=val_loss_fn, max_batches=cfg.max_batches,
                          autocast_dtype=autocast_dtype, channels_last=cfg.channels_last, fuse=fuse)
            row.update(val_loss=va["loss"], val_acc=va["acc"])
        row.update(lr=optimizer.param_groups[0]["lr"], seconds=tr["seconds"])
        history.append(row)
        fallback = -row["train_loss"] if cfg.monitor.endswith("acc") else row["train_loss"]
        monitored = row.get(cfg.monitor, fallback)
        if _better(monitored, best_value, cfg.monitor):
            best_value, best_epoch, bad_epochs = monitored, epoch, 0
            if ckpt_dir is not None and run is not None and run.is_main:
                atomic_torch_save({"model": model.state_dict(), "epoch": epoch, "metrics": row},
                                  ckpt_dir / "best.pt")
            else:
                best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        for cb in callbacks:
            cb(epoch, row, model)
        if run is not None:
            run.metrics.log(row)
        if ckpt_dir is not None and run is not None and run.is_main:
            atomic_torch_save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "best_value": best_value, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
            }, ckpt_dir / "last.pt")
        if verbose:
            msg = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.endswith(("loss", "acc")))
            print(f"[{stage}] epoch {epoch}/{cfg.epochs} {msg} ({tr['seconds']:.1f}s)", file=sys.stderr)

    # Restore the best weights for evaluation (under DDP once rank 0 has written them).
    distributed.barrier()
    if ckpt_dir is not None and (ckpt_dir / "best.pt").exists():
        model.load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"])
    elif best_state is not None:
        model.load_state_dict(best_state)
    secs = [r["seconds"] for r in history]
    mean_secs = sum(secs) / max(len(secs), 1)
    return FitResult(history, best_epoch, float(best_value or 0.0), mean_secs, stopped_early)


def _training_objective(model: nn.Module, loss_fn: LossFn, cfg: TrainConfig, device: torch.device,
                        find_unused: bool) -> LossFn:
    """`loss_fn` as the training step sees it: through DDP under torchrun, compiled with `cfg.compile`.

    The wrappers hold `model` and never replace it, so checkpoints keep plain state-dict keys (no
    `module.` or `_orig_mod.` prefix). Without either, `loss_fn` is returned as it is.
    """
    if not distributed.is_initialized() and not cfg.compile:
        return loss_fn
    # Custom objectives (or a restricted optimizer) may leave parameters out of the graph: DDP must look.
    objective = distributed.Objective(model, loss_fn)
    step: nn.Module = distributed.wrap(objective, device, find_unused_parameters=find_unused)
    if cfg.compile:
        step = torch.compile(step)  # type: ignore[assignment]

    def through_wrappers(_model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
        return step(x, y)

    return through_wrappers


def load_best(model: nn.Module, run_dir: Path, stage: str,
              device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load `stage`'s best weights from a run folder into `model`; returns the checkpoint's metrics."""
    state = load_checkpoint(Path(run_dir) / "checkpoints" / stage / "best.pt", map_location=device)
    model.load_state_dict(state["model"])
    return state.get("metrics", {})
