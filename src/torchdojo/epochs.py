"""One pass over batches: `train_one_epoch` (optimizer steps) and `evaluate` (no gradients).

Both take a `Step` (see `torchdojo.steps`), keep their sums on the device (one sync at the end, not one per
batch) and, under torchrun, reduce them over ranks. With `progress` (a label) they show a live bar
(`torchdojo.progress`): the training bar carries the running mean loss and metrics of the epoch so far.
"""

import itertools
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from torchdojo import distributed
from torchdojo import progress as live
from torchdojo.fusion import fused_bn_relu_pool
from torchdojo.steps import LossFn, Step, as_step, batch_len, select_rows, to_device

_INFO_EVERY_S = 0.25  # the running means on the bar are read this often (a read is a device sync)


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


def _running(loss_sum: torch.Tensor, sums: dict[str, torch.Tensor], n: int) -> str:
    """'loss 0.4123 acc 0.8512': this rank's means over the batches so far (what the bar shows)."""
    parts = [f"loss {float(loss_sum) / max(n, 1):.4f}"]
    parts += [f"{k} {float(sums[k]) / max(n, 1):.4f}" for k in sorted(sums)]
    return " ".join(parts)


def _planned(batches: Iterable[Any], max_batches: int) -> int | None:
    """How many batches a pass draws: len(batches), capped by max_batches (None when unknown)."""
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if max_batches:
        return min(total, max_batches) if total is not None else max_batches
    return total


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
    is the older (x, y) form. `progress`: the bar's label (none when empty). On CPU, `fuse` runs
    BN -> ReLU -> max-pool blocks as one op (`torchdojo.fusion`; same maths)."""
    step = as_step(step, loss_fn)
    with (
        fused_bn_relu_pool(model, enabled=fuse and device.type == "cpu"),
        live.bar(progress, _planned(batches, max_batches), enabled=bool(progress)) as bar,
    ):
        return _train_one_epoch(
            model,
            batches,
            optimizer,
            step,
            device,
            scheduler,
            grad_clip,
            max_batches,
            bar,
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
    bar: live.Bar,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
) -> dict[str, Any]:
    model.train()
    start = last_info = time.perf_counter()
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
        if bar.shown:  # the running means, read now and then (a read syncs the device); never a blank
            now = time.perf_counter()
            fresh = i == 0 or now - last_info >= _INFO_EVERY_S
            last_info = now if fresh else last_info
            bar.advance(1, _running(loss_sum, sums, n) if fresh else None)
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
    progress: str = "",
) -> dict[str, Any]:
    """Mean loss and the mean of each metric over `batches`; with `return_outputs`, also probabilities and
    targets (from the step's outputs/targets). Default step: cross-entropy on (x, y) batches.
    `progress`: the label of a live bar over the batches (none when empty).

    On CPU, `fuse` runs BN -> ReLU -> max-pool blocks as one op (`torchdojo.fusion`; same maths)."""
    step = as_step(step, loss_fn)
    with (
        fused_bn_relu_pool(model, enabled=fuse and device.type == "cpu"),
        live.bar(progress, _planned(batches, max_batches), enabled=bool(progress)) as bar,
    ):
        return _evaluate(model, batches, device, step, max_batches, return_outputs, autocast_dtype, channels_last, bar)


def _evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device,
    step: Step,
    max_batches: int,
    return_outputs: bool,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
    bar: live.Bar,
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
                bar.advance()
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
        bar.advance()
    means, n = _sums_to_means(loss_sum, sums, n, device)
    result: dict[str, Any] = {**means, "n": n}
    if return_outputs:
        result["probs"] = torch.cat(probs) if probs else torch.empty(0)
        result["targets"] = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
        if distributed.is_initialized():  # every rank gets all outputs, in the epoch's order when known
            result = distributed.gather_outputs(result, where if shard is not None else None, device)
    return result
