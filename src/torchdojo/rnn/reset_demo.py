"""The reset-gate cell learns to forget (MISSION F2): overfit a handful of sentences, then read its gate.

The task: a few real sentences, each alone and each appended after a sentence of the other class with a
`<reset>` token between them (`s_j <reset> s_i`, labelled like s_i). Only the part after `<reset>` decides
the label, so wiping the state at `<reset>` is the simplest solution; the gate R_t per token and the state
norm ||h_t|| show whether the cell found it. The overfitting trains through `engine.fit` (one full batch per
epoch, stopped by `until` once the handful is learned), with a `TrainConfig` the experiment builds from its
own settings: it is a demo outside the `train` group.
"""

import dataclasses
import random
from typing import Any

import torch

from torchdojo.config import TrainConfig
from torchdojo.engine import FitResult, fit
from torchdojo.rnn.model import RNNClassifier, Trace
from torchdojo.rnn.train import rnn_step
from torchdojo.runs import Run
from torchdojo.text.batching import TextBatches, pad_batch
from torchdojo.text.vocab import Vocab, tokenize

RESET = "<reset>"


@dataclasses.dataclass
class ResetTask:
    sentences: list[tuple[str, int]]  # the handful of originals
    examples: list[tuple[list[str], int]]  # tokens, label: originals and "s_j <reset> s_i" compositions
    vocab: Vocab


def make_reset_task(pairs: list[tuple[str, int]], n_per_class: int, seed: int, max_tokens: int = 12) -> ResetTask:
    """Pick `n_per_class` short sentences per class and build the originals plus every cross-class composition."""
    rng = random.Random(seed)
    picked: list[tuple[str, int]] = []
    for label in sorted({y for _, y in pairs}):
        short = [p for p in pairs if p[1] == label and 4 <= len(tokenize(p[0])) <= max_tokens]
        picked += rng.sample(short, min(n_per_class, len(short)))
    toks = [(tokenize(s), y) for s, y in picked]
    examples = list(toks)
    for a, ya in toks:
        for b, yb in toks:
            if ya != yb:
                examples.append(([*b, RESET, *a], ya))  # the label of what follows the reset
    vocab = Vocab.build([t for t, _ in toks] + [[RESET]], min_freq=1)
    return ResetTask(picked, examples, vocab)


def _tensors(
    task: ResetTask, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All examples as one padded batch: ids (N, T), lengths (N,), mask (N, T), labels (N,), on `device`."""
    ids, lengths, mask = pad_batch([task.vocab.encode(t) for t, _ in task.examples])
    y = torch.tensor([y for _, y in task.examples])
    return ids.to(device), lengths.to(device), mask.to(device), y.to(device)


def overfitted(row: dict[str, Any]) -> bool:
    """The demo's target: 100% training accuracy and a training loss under 0.01 (`fit`'s `until`)."""
    return row["train_acc"] == 1.0 and row["train_loss"] < 0.01


def overfit(
    task: ResetTask,
    cfg: TrainConfig,
    cell: str = "reset",
    hidden: int = 32,
    embed_dim: int = 16,
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    stage: str = "reset-overfit",
    run: Run | None = None,
    resume: bool = False,
    verbose: bool = False,
) -> tuple[RNNClassifier, FitResult]:
    """Training through `engine.fit` until `overfitted` (or `cfg.epochs` epochs), in batches of `cfg.batch_size`.

    The experiment sets `cfg.batch_size` to the number of examples: one full batch per epoch, so an epoch is
    one optimizer step and the history has one row per step. Without a validation split, fit keeps the
    weights of the lowest training loss."""
    device = torch.device(device)
    torch.manual_seed(seed)
    num_classes = 1 + max(y for _, y in task.examples)
    model = RNNClassifier(len(task.vocab), num_classes, cell, embed_dim=embed_dim, hidden_size=hidden, dropout=0.0).to(
        device
    )
    batches = TextBatches(
        [task.vocab.encode(t) for t, _ in task.examples],
        [y for _, y in task.examples],
        cfg.batch_size,
        shuffle=False,
        bucket=False,
        device=device,
    )  # the examples in order
    result = fit(
        model,
        batches,
        None,
        cfg,
        device=device,
        stage=stage,
        run=run,
        resume=resume,
        step=rnn_step(0, cfg.label_smoothing),
        until=overfitted,
        verbose=verbose,
    )
    return model, result


def _device(model: RNNClassifier) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def accuracy(model: RNNClassifier, task: ResetTask, only_originals: bool = False) -> float:
    """Accuracy on the task's examples (or only its original sentences)."""
    model.eval()
    ids, lengths, _, y = _tensors(task, _device(model))
    n = len(task.sentences) if only_originals else len(y)
    return (model(ids[:n], lengths[:n]).argmax(1) == y[:n]).float().mean().item()


@torch.no_grad()
def read_gate(model: RNNClassifier, tokens: list[str], vocab: Vocab) -> dict[str, Any]:
    """Per token: the mean gate R_t over hidden units (reset cells only), and ||h_t||, for one sentence."""
    model.eval()
    ids = torch.tensor([vocab.encode(tokens)], device=_device(model))
    trace = Trace()
    model.encode(ids, torch.tensor([len(tokens)]), trace=trace)
    out: dict[str, Any] = {"tokens": tokens, "state_norm": trace.state_norms()[0].tolist()}
    if hasattr(model.rnn, "gate"):
        gate = model.rnn.gate(model.embed(ids)[0])  # (T, H)
        out["gate_mean"] = gate.mean(1).tolist()
        out["gate"] = gate.T.tolist()  # (H, T) for a heat map
    return out


@torch.no_grad()
def state_spread(model: RNNClassifier, task: ResetTask) -> dict[str, float]:
    """How much the state depends on the prefix: spread of h over all compositions just before and at `<reset>`.

    Spread = mean distance of the states to their mean. If the state at `<reset>` no longer depends on what came
    before it (the cell forgot, by closing its gate or by saturating its candidate), the spread there is ~0.
    """
    model.eval()
    before, at = [], []
    for tokens, _ in task.examples:
        if RESET not in tokens:
            continue
        r = tokens.index(RESET)
        trace = Trace()
        ids = torch.tensor([task.vocab.encode(tokens[: r + 1])], device=_device(model))
        model.encode(ids, torch.tensor([r + 1]), trace=trace)
        before.append(trace.states[r - 1][0])
        at.append(trace.states[r][0])

    def spread(hs: list[torch.Tensor]) -> float:
        h = torch.stack(hs)
        return (h - h.mean(0)).norm(dim=1).mean().item()

    return {"before": spread(before), "at_reset": spread(at), "ratio": spread(at) / max(spread(before), 1e-12)}
