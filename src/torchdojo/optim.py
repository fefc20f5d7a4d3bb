"""Optimizers and per-step LR schedules built from a `TrainConfig`."""

import math
from collections.abc import Iterable

import torch

from torchdojo.config import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter] | list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov), Adam or AdamW, with the config's LR and weight decay.

    The update is one fused kernel over all parameters when torch has one for their device and dtype
    (CPU and CUDA floats): the same maths as the per-tensor loop, in about half the time on a small CNN."""
    params = list(params)
    if params and isinstance(params[0], dict):  # param groups: their tensors listed once, not consumed by _can_fuse
        params = [{**group, "params": list(group["params"])} for group in params]
    fused = _can_fuse(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
            fused=fused,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _can_fuse(params: list) -> bool | None:
    """True when every parameter is a floating-point tensor on CPU or CUDA (torch's fused kernels)."""
    tensors = [p for group in params for p in group["params"]] if params and isinstance(params[0], dict) else params
    ok = bool(tensors) and all(
        t.is_floating_point() and t.device.type in ("cpu", "cuda") and not t.is_sparse for t in tensors
    )
    return True if ok else None  # None: torch's own default (foreach or the loop)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step multiplier of the base LR: linear warm-up, then constant, cosine, one-cycle or step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)  # progress through the post-warm-up phase, 0..1
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "onecycle":  # linear up to peak at 25%, then linear down to 0
            return t / 0.25 if t < 0.25 else max(0.0, (1 - t) / 0.75)
        if cfg.schedule == "step":  # x0.1 at 50% and 75% of training
            return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
