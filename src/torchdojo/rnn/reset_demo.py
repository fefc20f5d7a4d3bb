"""The reset-gate cell and forgetting (MISSION F2): overfit a task built so that only what follows `<reset>`
decides the label, then read the gate.

The task: short word sequences `prefix <reset> suffix`, labelled 1 when the key word occurs in the suffix.
The prefixes carry the key too (half of them), so a cell that remembers across `<reset>` is misled; every
prefix is combined with every suffix, so identical suffixes follow different prefixes (same label) and
identical prefixes precede different suffixes (different labels). Wiping the state at `<reset>` solves it;
held-out prefixes (never seen in training) measure whether the cell did: a cell that forgets gets them right
for free. The overfitting trains through `engine.fit` (one full batch per epoch, stopped by `until` once the
task is learned), with a `TrainConfig` the experiment builds from its own settings: a demo outside the
`train` group.
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
from torchdojo.text.vocab import Vocab

RESET = "<reset>"
KEY = "great"
FILLERS = ("the", "a", "movie", "was", "it", "and", "so", "very")


@dataclasses.dataclass
class ResetTask:
    prefixes: list[list[str]]  # the training prefixes (half contain KEY)
    suffixes: list[list[str]]  # the suffixes (half contain KEY): their KEY decides the label
    examples: list[tuple[list[str], int]]  # tokens, label: every training prefix with every suffix
    unseen: list[tuple[list[str], int]]  # held-out prefixes with every suffix: forgetting gets these right
    vocab: Vocab


def _words(rng: random.Random, lo: int, hi: int, key: bool) -> list[str]:
    words = [rng.choice(FILLERS) for _ in range(rng.randint(lo, hi))]
    if key:
        words[rng.randrange(len(words))] = KEY
    return words


def make_reset_task(n: int, seed: int, lo: int = 3, hi: int = 6) -> ResetTask:
    """`n` prefixes and `n` suffixes of lo..hi words (half of each with KEY), all n x n training compositions,
    and `n` held-out prefixes composed with the same suffixes."""
    if n < 2:
        raise ValueError(f"the reset task needs n >= 2 prefixes and suffixes, got {n}")
    rng = random.Random(seed)
    drawn: set[tuple[str, ...]] = set()

    def distinct(key: bool) -> list[str]:  # every prefix and suffix differs from every other one
        while tuple(words := _words(rng, lo, hi, key)) in drawn:
            pass
        drawn.add(tuple(words))
        return words

    prefixes = [distinct(i % 2 == 1) for i in range(n)]
    suffixes = [distinct(i % 2 == 1) for i in range(n)]
    held = [distinct(i % 2 == 1) for i in range(n)]

    def compose(ps: list[list[str]]) -> list[tuple[list[str], int]]:
        return [([*p, RESET, *s], int(KEY in s)) for p in ps for s in suffixes]

    vocab = Vocab.build([[*FILLERS, KEY, RESET]], min_freq=1)
    return ResetTask(prefixes, suffixes, compose(prefixes), compose(held), vocab)


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
def accuracy(model: RNNClassifier, task: ResetTask, unseen: bool = False) -> float:
    """Accuracy on the task's training compositions (or on those with held-out prefixes)."""
    model.eval()
    examples = task.unseen if unseen else task.examples
    ids, lengths, _ = pad_batch([task.vocab.encode(t) for t, _ in examples])
    y = torch.tensor([y for _, y in examples], device=_device(model))
    dev = _device(model)
    return (model(ids.to(dev), lengths.to(dev)).argmax(1) == y).float().mean().item()


@torch.no_grad()
def gate_and_norms(model: RNNClassifier, task: ResetTask) -> dict[str, float]:
    """Over every training composition: the mean gate R_t at `<reset>` and at the other tokens (reset cells;
    R_t depends on the token only), its smallest unit at `<reset>`, and the mean state norm just before and
    at `<reset>`."""
    model.eval()
    out: dict[str, float] = {}
    before, at = [], []
    for tokens, _ in task.examples:
        r = tokens.index(RESET)
        trace = Trace()
        ids = torch.tensor([task.vocab.encode(tokens)], device=_device(model))
        model.encode(ids, torch.tensor([len(tokens)]), trace=trace)
        norms = trace.state_norms()[0]
        before.append(float(norms[r - 1]))
        at.append(float(norms[r]))
    out["norm_before"], out["norm_at"] = sum(before) / len(before), sum(at) / len(at)
    if hasattr(model.rnn, "gate"):
        tokens = [t for ex, _ in task.examples for t in ex]
        ids = torch.tensor(task.vocab.encode(tokens), device=_device(model))
        gate = model.rnn.gate(model.embed(ids))  # (N, H)
        is_reset = torch.tensor([t == RESET for t in tokens], device=gate.device)
        out["gate_at_reset"] = float(gate[is_reset].mean())
        out["gate_elsewhere"] = float(gate[~is_reset].mean())
        out["gate_min_unit_at_reset"] = float(gate[is_reset].mean(0).min())
    return out


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
