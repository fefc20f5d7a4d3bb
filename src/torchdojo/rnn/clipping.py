"""Gradient clipping shown (MISSION F4): what it prevents and what it costs, measured on exploding gradients.

The setting: an Elman classifier with ReLU and an orthogonal recurrent matrix scaled to spectral radius
`radius` > 1, so states and gradients grow like radius^T along a sentence. The same initial weights are
trained with plain SGD (the update is exactly -lr * g, so the clipped gradient *is* the step) three times:
no clipping, clipping by global norm, clipping by value. Each step records the raw gradient norm, the
clipped one, and the cosine between them; over the run we also compare the sum of raw gradients with the
sum of clipped ones (norm clipping down-weights the steps with large gradients: a biased average).

The study keeps its explicit loop instead of `engine.fit`: the raw gradient between `backward()` and the
clipping is what it measures, and fit clips inside its step. It reads none of the `train.*` settings: the
optimizer (plain SGD at `lr`), the number of steps, the thresholds and the batches (the experiment builds them
with its own `clip_batch_size`) all come from the experiment's `clip_*` fields.
"""

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from torchdojo.nn.elman import ElmanCell
from torchdojo.rnn.model import RNNClassifier
from torchdojo.rnn.train import ClipMode, clip_gradients, evaluate
from torchdojo.text.batching import TextBatches


@dataclasses.dataclass
class ClipRun:
    """One training run of the study: per-step records and the summary numbers."""

    name: str
    mode: ClipMode
    threshold: float
    steps: list[dict[str, float]] = dataclasses.field(default_factory=list)
    diverged_at: int | None = None  # first step whose loss or gradient was not finite
    test_acc: float = float("nan")
    sum_cos: float = float("nan")  # cos(sum of raw gradients, sum of applied gradients)

    def summary(self) -> dict[str, Any]:
        """Numbers for the report table."""
        s = self.steps

        def med(key: str) -> float:
            return float(torch.tensor([r[key] for r in s]).median()) if s else float("nan")

        return {
            "run": self.name,
            "clip": self.mode,
            "threshold": self.threshold,
            "steps": len(s),
            "diverged_at": self.diverged_at if self.diverged_at is not None else "-",
            "final_loss": s[-1]["loss"] if s else float("nan"),
            "max_raw_grad_norm": max((r["raw_norm"] for r in s), default=float("nan")),
            "median_scale": med("scale"),
            "median_cos": med("cos"),
            "min_cos": min((r["cos"] for r in s), default=float("nan")),
            "sum_cos": self.sum_cos,
            "test_acc": self.test_acc if math.isfinite(self.test_acc) else None,
        }


def exploding_model(
    vocab_size: int, num_classes: int, radius: float, embed_dim: int = 32, hidden_size: int = 64, seed: int = 0
) -> RNNClassifier:
    """An Elman classifier with ReLU whose recurrent matrix is `radius` x a random orthogonal matrix."""
    torch.manual_seed(seed)
    model = RNNClassifier(vocab_size, num_classes, "elman", embed_dim, hidden_size, dropout=0.0)
    model.rnn = ElmanCell(embed_dim, hidden_size, nonlinearity="relu")
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(hidden_size, hidden_size))
        model.rnn.weight_hh.copy_(radius * q)
    return model


def _flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def train_with_clipping(
    model: RNNClassifier,
    train: TextBatches,
    test: TextBatches,
    mode: ClipMode,
    threshold: float,
    lr: float,
    max_steps: int,
    name: str = "",
) -> ClipRun:
    """Plain SGD for `max_steps` steps (cycling epochs), recording raw vs clipped gradients; stops on divergence."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    run = ClipRun(name or mode, mode, threshold)
    sum_raw = sum_applied = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=params[0].device)
    step, epoch = 0, 0
    while step < max_steps and run.diverged_at is None:
        epoch += 1
        train.set_epoch(epoch)
        model.train()
        for ids, lengths, _, y in train:
            if step >= max_steps:
                break
            loss = F.cross_entropy(model(ids, lengths), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            raw = _flat_grad(params)
            raw_norm = raw.norm().item()
            if not (math.isfinite(loss.item()) and math.isfinite(raw_norm)):
                run.diverged_at = step
                break
            clip_gradients(params, mode, threshold)
            applied = _flat_grad(params)
            app_norm = applied.norm().item()
            cos = F.cosine_similarity(raw.double(), applied.double(), dim=0).item() if raw_norm > 0 else 1.0
            sum_raw = sum_raw + raw.double()
            sum_applied = sum_applied + applied.double()
            run.steps.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "raw_norm": raw_norm,
                    "applied_norm": app_norm,
                    "scale": app_norm / raw_norm if raw_norm > 0 else 1.0,
                    "cos": cos,
                }
            )
            opt.step()
            step += 1
    if run.steps:
        run.sum_cos = F.cosine_similarity(sum_raw, sum_applied, dim=0).item()
    finite = all(torch.isfinite(p).all() for p in params)
    run.test_acc = evaluate(model, test)["acc"] if finite and run.diverged_at is None else float("nan")
    return run


def clipping_study(
    train: TextBatches,
    test: TextBatches,
    vocab_size: int,
    num_classes: int,
    *,
    radius: float,
    lr: float,
    max_steps: int,
    norm_threshold: float,
    value_threshold: float,
    hidden_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[ClipRun]:
    """The three runs (none, norm, value) from the same initial weights, trained on `device` (the batches')."""
    runs = []
    for mode, thr in (("none", 0.0), ("norm", norm_threshold), ("value", value_threshold)):
        model = exploding_model(vocab_size, num_classes, radius, hidden_size=hidden_size, seed=seed).to(device)
        label = "no clipping" if mode == "none" else f"clip by {mode} ({thr:g})"
        runs.append(train_with_clipping(model, train, test, mode, thr, lr, max_steps, label))  # type: ignore[arg-type]
    return runs
