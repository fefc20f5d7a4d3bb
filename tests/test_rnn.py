"""RNN cells, the classifier's exact truncated BPTT, nn.RNN as an oracle, gradient clipping, and the engine
Step the classifier and the reset-gate demo train with."""

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo.config import TrainConfig
from torchdojo.rnn import (
    CELLS,
    LipschitzCell,
    ResetGateCell,
    RNNClassifier,
    build_cell,
    clip_gradients,
    evaluate,
    position_gradients,
    structured,
    train_classifier,
)
from torchdojo.rnn.reset_demo import KEY, RESET, accuracy, gate_and_norms, make_reset_task, overfit, overfitted
from torchdojo.rnn.train import rnn_step
from torchdojo.runs import Run
from torchdojo.text import TextBatches

ALL_CELLS = RNNClassifier.cell_names()


def _batch(lengths: list[int], vocab: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (len(lengths), max(lengths)), generator=g)
    for i, n in enumerate(lengths):
        ids[i, n:] = 0
    return ids, torch.tensor(lengths), torch.randint(0, 2, (len(lengths),), generator=g)


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("t", [0, 1, 3, 7, 25])
def test_truncation_is_exact(cell, t):
    """Gradient exactly zero before T - t, non-zero inside the window, per sentence of length T."""
    torch.manual_seed(0)
    model = RNNClassifier(40, 2, cell, embed_dim=6, hidden_size=10, dropout=0.0)
    lengths = [12, 3, 9, 20, 7]
    ids, lens, y = _batch(lengths)
    g = position_gradients(model, ids, lens, y, tbptt_steps=t)
    for b, T in enumerate(lengths):
        lo = max(T - t, 0) if t > 0 else 0
        assert (g["dx"][b, :lo] == 0).all(), f"dL/dx leaks past the window (T={T}, t={t})"
        assert (g["dx"][b, lo:T] > 0).all(), f"dL/dx missing inside the window (T={T}, t={t})"
        assert (g["dx"][b, T:] == 0).all()  # padding
        if "dh" in g:
            assert (g["dh"][b, :lo] == 0).all() and (g["dh"][b, lo:T] > 0).all()
    assert ("dh" in g) == (cell != "torch")


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=4), st.integers(1, 30), st.integers(0, 99))
def test_truncation_window_any_t_and_T(lengths, t, seed):
    torch.manual_seed(seed)
    model = RNNClassifier(40, 2, "elman", embed_dim=4, hidden_size=6, dropout=0.0)
    ids, lens, y = _batch(lengths, seed=seed)
    dx = position_gradients(model, ids, lens, y, tbptt_steps=t)["dx"]
    nonzero = dx > 0
    for b, T in enumerate(lengths):
        assert nonzero[b].nonzero().flatten().tolist() == list(range(max(T - t, 0), T))


@pytest.mark.parametrize("t", [0, 4])
def test_hand_stepped_elman_matches_fused_nn_rnn(t):
    """Same weights: the Python-stepped ElmanCell and packed nn.RNN give the same logits and input gradients."""
    torch.manual_seed(0)
    ours = RNNClassifier(40, 3, "elman", embed_dim=5, hidden_size=7, dropout=0.0)
    ref = RNNClassifier(40, 3, "torch", embed_dim=5, hidden_size=7, dropout=0.0)
    ref.embed.load_state_dict(ours.embed.state_dict())
    ref.head.load_state_dict(ours.head.state_dict())
    ref.rnn.load_state_dict({f"{k}_l0": v for k, v in ours.rnn.state_dict().items()})
    ids, lens, _ = _batch([9, 2, 6, 4])
    y = torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(ours(ids, lens, t), ref(ids, lens, t))
    torch.testing.assert_close(
        position_gradients(ours, ids, lens, y, t)["dx"], position_gradients(ref, ids, lens, y, t)["dx"]
    )


@pytest.mark.parametrize("name", CELLS.names())
def test_cell_shapes_and_gradcheck(name):
    torch.manual_seed(0)
    cell = build_cell(name, 3, 4).double()
    x = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    out = cell(x, h)
    assert out.shape == (2, 4)
    assert torch.autograd.gradcheck(lambda a, b: cell(a, b), (x, h))
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cell.parameters())


def test_reset_gate_depends_only_on_input_and_can_wipe_the_state():
    torch.manual_seed(0)
    cell = ResetGateCell(3, 5)
    x = torch.randn(4, 3)
    h1, h2 = torch.randn(4, 5), 10 * torch.randn(4, 5)
    torch.testing.assert_close(cell.gate(x), torch.sigmoid(x @ cell.weight_r.T + cell.bias_r))
    cand = torch.tanh(
        x @ cell.candidate.weight_ih.T
        + cell.candidate.bias_ih
        + h1 @ cell.candidate.weight_hh.T
        + cell.candidate.bias_hh
    )
    torch.testing.assert_close(cell(x, h1), cand * cell.gate(x))
    with torch.no_grad():
        cell.bias_r.fill_(-30.0)  # the reset button pressed for every input
    assert cell(x, h1).abs().max() < 1e-12 and cell(x, h2).abs().max() < 1e-12
    assert cell(x).shape == (4, 5)


def test_lipschitz_plain_form_is_the_formula():
    torch.manual_seed(0)
    cell = LipschitzCell(3, 4)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    expected = h @ cell.A.T + torch.tanh(h @ cell.W.T + x @ cell.U.T + cell.b)
    torch.testing.assert_close(cell(x, h), expected)
    assert {n for n, _ in cell.named_parameters()} == {"A", "W", "U", "b"}


def test_structured_matrices():
    m = torch.randn(6, 6, dtype=torch.double)
    eye = torch.eye(6, dtype=torch.double)
    skew = structured(m, beta=1.0, gamma=0.5) + 0.5 * eye
    torch.testing.assert_close(skew, -skew.T)  # beta = 1: skew-symmetric, shifted by -gamma
    sym = structured(m, beta=0.0, gamma=0.0)
    torch.testing.assert_close(sym, sym.T)
    # the skew part has purely imaginary eigenvalues, so A = beta-mix - gamma I has real parts near -gamma
    eig = torch.linalg.eigvals(structured(m, 1.0, 0.25))
    torch.testing.assert_close(eig.real, torch.full((6,), -0.25, dtype=torch.double))
    cell = LipschitzCell(3, 6, structured=True, eps=0.1)
    a, w = cell.matrices()
    torch.testing.assert_close(a, torch.eye(6) + 0.1 * structured(cell.A, cell.beta, cell.gamma_a))
    x, h = torch.randn(2, 3), torch.randn(2, 6)
    torch.testing.assert_close(cell(x, h), h @ a.T + 0.1 * torch.tanh(h @ w.T + x @ cell.U.T + cell.b))


def test_clip_by_norm_keeps_direction_clip_by_value_does_not():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([30.0, 4.0, 0.0])
    clip_gradients([p], "norm", 1.0)
    torch.testing.assert_close(p.grad, torch.tensor([30.0, 4.0, 0.0]) / torch.tensor([30.0, 4.0]).norm())
    p.grad = torch.tensor([30.0, 4.0, -0.5])
    clip_gradients([p], "value", 1.0)
    torch.testing.assert_close(p.grad, torch.tensor([1.0, 1.0, -0.5]))
    with pytest.raises(ValueError):
        clip_gradients([p], "sideways", 1.0)  # type: ignore[arg-type]


def _text_batches(n: int = 24, seed: int = 0, batch_size: int = 8, shuffle: bool = True) -> TextBatches:
    g = torch.Generator().manual_seed(seed)
    seqs = [
        torch.randint(2, 30, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]
    return TextBatches(seqs, [s[0] % 2 for s in seqs], batch_size, shuffle=shuffle, seed=seed)


def test_rnn_step_is_the_engine_classification_with_label_smoothing():
    """The step's loss is the (smoothed) cross-entropy of model(ids, lengths, t); fit accepts the smoothing."""
    torch.manual_seed(0)
    model = RNNClassifier(30, 2, "elman", embed_dim=4, hidden_size=6, dropout=0.0)
    batch = next(iter(_text_batches()))
    ids, lengths, _, y = batch
    out = rnn_step(3, label_smoothing=0.1)(model, batch)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(ids, lengths, 3), y, label_smoothing=0.1))
    assert out.count == len(y) and int(out.metrics["acc"]) == int((model(ids, lengths).argmax(1) == y).sum())
    res = train_classifier(
        model,
        _text_batches(),
        _text_batches(shuffle=False),
        TrainConfig(epochs=2, batch_size=8, label_smoothing=0.1, channels_last=False, cpu_fusion=False),
        device=torch.device("cpu"),
        tbptt_steps=3,
        verbose=False,
    )
    assert [r["epoch"] for r in res.history] == [1, 2] and {"train_acc", "val_acc", "val_loss"} <= set(res.history[0])
    ev = evaluate(model, _text_batches(shuffle=False))
    assert ev["n"] == 24 and 0 <= ev["acc"] <= 1


def test_reset_task_needs_only_what_follows_the_reset():
    task = make_reset_task(6, seed=1)
    assert len(task.examples) == 36 and len(task.unseen) == 36
    for tokens, y in task.examples + task.unseen:
        r = tokens.index(RESET)
        assert tokens.count(RESET) == 1 and y == int(KEY in tokens[r + 1 :])
    # identical suffixes after different prefixes (same label), identical prefixes before different suffixes
    by_suffix: dict[tuple[str, ...], set[int]] = {}
    for tokens, y in task.examples:
        by_suffix.setdefault(tuple(tokens[tokens.index(RESET) + 1 :]), set()).add(y)
    assert all(len(ys) == 1 for ys in by_suffix.values()) and len(by_suffix) == 6
    assert sum(KEY in p for p in task.prefixes) == 3  # half the prefixes carry the key: they mislead
    seen = {tuple(p) for p in task.prefixes}
    assert not any(tuple(t[: t.index(RESET)]) in seen for t, _ in task.unseen)


def test_gate_and_norms_read_a_shut_gate():
    task = make_reset_task(4, seed=0)
    torch.manual_seed(0)
    model = RNNClassifier(len(task.vocab), 2, "reset", embed_dim=8, hidden_size=8, dropout=0.0)
    m = gate_and_norms(model, task)
    assert 0 < m["gate_at_reset"] < 1 and m["norm_before"] > 0
    with torch.no_grad():
        model.rnn.weight_r.zero_()
        model.rnn.bias_r.fill_(-30.0)  # the reset button pressed for every token: every state is wiped
    m = gate_and_norms(model, task)
    assert m["gate_at_reset"] < 1e-9 and m["gate_elsewhere"] < 1e-9 and m["norm_at"] < 1e-9


def test_reset_overfit_trains_through_fit_and_stops_by_until(tmp_path):
    """Full batch (one step per epoch), stopped at the first epoch with 100% accuracy and loss < 0.01."""
    task = make_reset_task(3, seed=0)
    run = Run(tmp_path / "run")
    cfg = TrainConfig(epochs=300, batch_size=len(task.examples), lr=1e-2, channels_last=False, cpu_fusion=False)
    model, res = overfit(task, cfg, "reset", hidden=16, run=run, stage="reset-overfit")
    h = res.history
    assert res.stopped_early and overfitted(h[-1]) and not any(overfitted(r) for r in h[:-1])
    assert len(h) < cfg.epochs and [r["epoch"] for r in h] == list(range(1, len(h) + 1))
    assert accuracy(model, task) == 1.0
    assert (tmp_path / "run" / "checkpoints" / "reset-overfit" / "last.pt").exists()
    run.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(h) and {r["stage"] for r in rows} == {"reset-overfit"}
