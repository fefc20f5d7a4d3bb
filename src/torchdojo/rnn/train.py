"""Training and evaluation of `RNNClassifier` with truncated BPTT, and per-position gradient measurement.

The loop is written out (not `engine.fit`) because a step needs the sentence lengths and `tbptt_steps`, and
the clipping study reads the raw gradient before it is clipped.
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo.config import TrainConfig
from torchdojo.errors import TrainingDiverged
from torchdojo.optim import build_optimizer
from torchdojo.rnn.model import RNNClassifier, Trace
from torchdojo.text.batching import TextBatches

ClipMode = Literal["none", "norm", "value"]


def clip_gradients(params: list[nn.Parameter], mode: ClipMode, threshold: float) -> None:
    """Clip in place: by global L2 norm (rescale, direction kept) or by value (each entry into [-c, c])."""
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, threshold)
    elif mode == "value":
        torch.nn.utils.clip_grad_value_(params, threshold)
    elif mode != "none":
        raise ValueError(f"clip mode must be none, norm or value, got {mode!r}")


@torch.no_grad()
def evaluate(model: RNNClassifier, batches: TextBatches) -> dict[str, float]:
    """Mean loss and accuracy over `batches`."""
    model.eval()
    loss = correct = n = 0.0
    for ids, lengths, _, y in batches:
        logits = model(ids, lengths)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return {"loss": loss / max(n, 1), "acc": correct / max(n, 1), "n": int(n)}


@dataclasses.dataclass
class TrainResult:
    history: list[dict[str, Any]]
    seconds_per_epoch: float


StepHook = Callable[[int, list[nn.Parameter], torch.Tensor], None]


def train_classifier(model: RNNClassifier, train: TextBatches, test: TextBatches | None, cfg: TrainConfig,
                     tbptt_steps: int = 0, clip: ClipMode = "none", clip_threshold: float = 1.0,
                     step_hook: StepHook | None = None, log: Callable[[str], None] | None = None,
                     ) -> TrainResult:
    """Adam/SGD on cross-entropy; `cfg.grad_clip` > 0 means norm clipping unless `clip` says otherwise.

    `step_hook(step, params, loss)` runs after backward and before clipping (it may read the raw gradient).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg)
    if clip == "none" and cfg.grad_clip > 0:
        clip, clip_threshold = "norm", cfg.grad_clip
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        train.set_epoch(epoch)
        tot = correct = n = 0.0
        for i, (ids, lengths, _, y) in enumerate(train):
            if cfg.max_batches and i >= cfg.max_batches:
                break
            logits = model(ids, lengths, tbptt_steps)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch}, step {step}",
                                       "lower train.lr or clip gradients (train.grad_clip=1)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step_hook is not None:
                step_hook(step, params, loss.detach())
            clip_gradients(params, clip, clip_threshold)
            opt.step()
            step += 1
            tot += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": tot / max(n, 1),
                               "train_acc": correct / max(n, 1)}
        if test is not None:
            ev = evaluate(model, test)
            row.update(val_loss=ev["loss"], val_acc=ev["acc"])
        history.append(row)
        if log:
            log("  epoch {epoch}: train loss {train_loss:.3f} acc {train_acc:.3f}".format(**row)
                + (" | test loss {val_loss:.3f} acc {val_acc:.3f}".format(**row) if test is not None else ""))
    return TrainResult(history, (time.perf_counter() - start) / max(cfg.epochs, 1))


def position_gradients(model: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor,
                       tbptt_steps: int = 0) -> dict[str, torch.Tensor]:
    """Per-sentence ||dL/dx_k|| and ||dL/dh_k|| (B, T) of the cross-entropy loss, in eval mode (no dropout).

    The loss is summed over the batch so that each sentence's gradients are its own loss's gradients.
    """
    model.eval()
    model.zero_grad(set_to_none=True)
    trace = Trace()
    loss = F.cross_entropy(model(ids, lengths, tbptt_steps, trace), y, reduction="sum")
    loss.backward()
    dx, dh = trace.grad_norms()
    out = {"dx": dx.detach()}
    if dh is not None:
        out["dh"] = dh.detach()
    model.zero_grad(set_to_none=True)
    return out
