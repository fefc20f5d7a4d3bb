"""Training and evaluation of `RNNClassifier` through the shared engine, and per-position gradient measurement.

`rnn_step` is the engine `Step` over the padded batches of `TextBatches` (ids, lengths, mask, labels): the
logits of `model(ids, lengths, tbptt_steps)` and their cross-entropy. `train_classifier` hands it to
`torchdojo.engine.fit`, so every classifier run gets checkpoints, exact resume, early stopping, schedules,
gradient clipping (`cfg.grad_clip`), NaN stop and the standard console line. Only the gradient clipping
study (`torchdojo.rnn.clipping`) keeps a loop of its own: the raw gradient before clipping is its subject.
"""

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo import engine
from torchdojo.config import TrainConfig
from torchdojo.engine import FitResult, Step, StepOutput
from torchdojo.rnn.model import RNNClassifier, Trace
from torchdojo.runs import Run
from torchdojo.text.batching import TextBatches, pad_batch

ClipMode = Literal["none", "norm", "value"]


def clip_gradients(params: list[nn.Parameter], mode: ClipMode, threshold: float) -> None:
    """Clip in place: by global L2 norm (rescale, direction kept) or by value (each entry into [-c, c])."""
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, threshold)
    elif mode == "value":
        torch.nn.utils.clip_grad_value_(params, threshold)
    elif mode != "none":
        raise ValueError(f"clip mode must be none, norm or value, got {mode!r}")


def rnn_step(tbptt_steps: int = 0, label_smoothing: float = 0.0) -> Step:
    """The engine Step of the classifier on one (ids, lengths, mask, y) batch: cross-entropy (with
    `label_smoothing`) of `model(ids, lengths, tbptt_steps)`, and the number correct as `acc`.

    Truncation only cuts gradients, so the same step validates (under no_grad it changes nothing)."""

    def step(model: nn.Module, batch: Any) -> StepOutput:
        ids, lengths, _mask, y = batch  # the mask is implied by the lengths: the model stops at each length
        return engine.classification(model(ids, lengths, tbptt_steps), y, label_smoothing=label_smoothing)

    step.uses_label_smoothing = True  # type: ignore[attr-defined]
    return step


def train_classifier(
    model: RNNClassifier,
    train: TextBatches,
    val: TextBatches | None,
    cfg: TrainConfig,
    *,
    device: torch.device,
    tbptt_steps: int = 0,
    stage: str = "main",
    run: Run | None = None,
    resume: bool = False,
    verbose: bool = True,
) -> FitResult:
    """`engine.fit` with `rnn_step`: training on cross-entropy with `cfg.label_smoothing` and the truncation
    window `tbptt_steps`; validation (best epoch by `cfg.monitor`) on the plain cross-entropy, like the test."""
    return engine.fit(
        model,
        train,
        val,
        cfg,
        device=device,
        stage=stage,
        run=run,
        resume=resume,
        step=rnn_step(tbptt_steps, cfg.label_smoothing),
        val_step=rnn_step(),
        verbose=verbose,
    )


def evaluate(model: RNNClassifier, batches: TextBatches, device: torch.device | None = None) -> dict[str, Any]:
    """Mean (plain) cross-entropy `loss`, accuracy `acc` and count `n` over `batches` (`engine.evaluate`)."""
    if device is None:
        device = next(model.parameters()).device
    return engine.evaluate(model, batches, rnn_step(), device=device)


def position_gradients(
    model: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, tbptt_steps: int = 0
) -> dict[str, torch.Tensor]:
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


def fixed_length_batch(
    seqs: list[list[int]], labels: list[int], length: int, limit: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Test sentences with >= `length` tokens, cut to exactly `length`, so positions line up."""
    keep = [(s[:length], y) for s, y in zip(seqs, labels, strict=True) if len(s) >= length][:limit]
    if not keep:
        return None
    ids, lengths, _ = pad_batch([s for s, _ in keep])
    return ids, lengths, torch.tensor([y for _, y in keep])
