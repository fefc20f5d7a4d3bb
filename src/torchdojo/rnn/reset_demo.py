"""The reset-gate cell learns to forget (MISSION F2): overfit a handful of sentences, then read its gate.

The task: a few real sentences, each alone and each appended after a sentence of the other class with a
`<reset>` token between them (`s_j <reset> s_i`, labelled like s_i). Only the part after `<reset>` decides
the label, so wiping the state at `<reset>` is the simplest solution; the gate R_t per token and the state
norm ||h_t|| show whether the cell found it.
"""

import dataclasses
import random
from typing import Any

import torch
import torch.nn.functional as F

from torchdojo.rnn.model import RNNClassifier, Trace
from torchdojo.text.batching import pad_batch
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


def _tensors(task: ResetTask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, lengths, _ = pad_batch([task.vocab.encode(t) for t, _ in task.examples])
    return ids, lengths, torch.tensor([y for _, y in task.examples])


def overfit(task: ResetTask, cell: str = "reset", hidden: int = 32, steps: int = 400, lr: float = 1e-2,
            seed: int = 0) -> tuple[RNNClassifier, list[dict[str, float]]]:
    """Full-batch Adam on all examples until 100% accuracy and loss < 0.01 (or `steps`); history per step."""
    torch.manual_seed(seed)
    num_classes = 1 + max(y for _, y in task.examples)
    model = RNNClassifier(len(task.vocab), num_classes, cell, embed_dim=16, hidden_size=hidden, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ids, lengths, y = _tensors(task)
    history: list[dict[str, float]] = []
    for step in range(1, steps + 1):
        model.train()
        logits = model(ids, lengths)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = (logits.argmax(1) == y).float().mean().item()
        history.append({"step": step, "loss": loss.item(), "acc": acc})
        if acc == 1.0 and loss.item() < 0.01:
            break
    return model, history


@torch.no_grad()
def accuracy(model: RNNClassifier, task: ResetTask, only_originals: bool = False) -> float:
    """Accuracy on the task's examples (or only its original sentences)."""
    model.eval()
    ids, lengths, y = _tensors(task)
    n = len(task.sentences) if only_originals else len(y)
    return (model(ids[:n], lengths[:n]).argmax(1) == y[:n]).float().mean().item()


@torch.no_grad()
def read_gate(model: RNNClassifier, tokens: list[str], vocab: Vocab) -> dict[str, Any]:
    """Per token: the mean gate R_t over hidden units (reset cells only), and ||h_t||, for one sentence."""
    model.eval()
    ids = torch.tensor([vocab.encode(tokens)])
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
        model.encode(torch.tensor([task.vocab.encode(tokens[: r + 1])]), torch.tensor([r + 1]), trace=trace)
        before.append(trace.states[r - 1][0])
        at.append(trace.states[r][0])

    def spread(hs: list[torch.Tensor]) -> float:
        h = torch.stack(hs)
        return (h - h.mean(0)).norm(dim=1).mean().item()

    return {"before": spread(before), "at_reset": spread(at), "ratio": spread(at) / max(spread(before), 1e-12)}
