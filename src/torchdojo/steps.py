"""What one training or evaluation step is: `step(model, batch) -> StepOutput`, over any batch type.

The engine (`torchdojo.engine`) runs steps; this module defines them and the helpers they share: the
classifier's output (`classification`), the adapter for `(model, x, y) -> (loss, logits)` objectives
(`xy_step`), and moving any nested batch to a device (`to_device`).
"""

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# (model, x, y) -> (loss, logits or None): an objective on (images, labels) batches; logits give the accuracy
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclasses.dataclass
class StepOutput:
    """What one step on one batch gives the engine.

    `loss` is the mean over `count` items (images, sentences or tokens): backward goes through it and the
    epoch's loss is the `count`-weighted mean. `metrics` are sums over the same items (e.g. `{"acc": number
    correct}`), logged as means (`train_acc`, `val_acc`); a regression step has none, so none is logged.
    `outputs`/`targets` (logits and labels) are only read by `evaluate(return_outputs=True)`.
    """

    loss: torch.Tensor
    count: int
    metrics: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    outputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None


# (model, batch) -> StepOutput, for any batch type: (images, labels), padded token batches, ...
Step = Callable[[nn.Module, Any], StepOutput]


def classification(
    logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> StepOutput:
    """The StepOutput of a classifier: cross-entropy (unless `loss` is given), accuracy, logits and labels."""
    if loss is None:
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    correct = (logits.detach().argmax(1) == y).sum()
    return StepOutput(loss, len(y), {"acc": correct}, outputs=logits, targets=y)


def xy_step(loss_fn: LossFn) -> Step:
    """A `Step` for (x, y) batches from an objective `loss_fn(model, x, y) -> (loss, logits or None)`."""

    def step(model: nn.Module, batch: Any) -> StepOutput:
        x, y = batch
        loss, logits = loss_fn(model, x, y)
        if logits is None:
            return StepOutput(loss, len(y))
        return classification(logits, y, loss)

    step.uses_label_smoothing = getattr(loss_fn, "uses_label_smoothing", False)  # type: ignore[attr-defined]
    return step


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    objective.uses_label_smoothing = True  # type: ignore[attr-defined]
    return objective


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """`batch` (a tensor, or tuples/lists/dicts of them) on `device`; 4-D float tensors in channels_last."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def batch_len(batch: Any) -> int:
    """The number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    items = batch.values() if isinstance(batch, dict) else batch
    for b in items:
        n = batch_len(b)
        if n >= 0:
            return n
    return -1


def select_rows(batch: Any, keep: torch.Tensor, n: int) -> Any:
    """The rows `keep` (bool, length n) of every tensor in `batch` whose first dimension is n."""
    if isinstance(batch, torch.Tensor):
        return batch[keep.to(batch.device)] if batch.ndim and len(batch) == n else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(select_rows(b, keep, n) for b in batch)
    if isinstance(batch, dict):
        return {k: select_rows(v, keep, n) for k, v in batch.items()}
    return batch


def as_step(step: Step | LossFn | None, loss_fn: LossFn | None = None, label_smoothing: float = 0.0) -> Step:
    """A Step from whichever form was given (an (x, y) objective takes 3 arguments, a Step 2); the default is
    cross-entropy with `label_smoothing`."""
    if step is not None and loss_fn is not None:
        raise TypeError("give step or loss_fn, not both")
    if step is None:
        return xy_step(loss_fn or cross_entropy(label_smoothing))
    if _takes_three(step):
        return xy_step(step)  # type: ignore[arg-type]
    return step  # type: ignore[return-value]


def _takes_three(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params) == 3
