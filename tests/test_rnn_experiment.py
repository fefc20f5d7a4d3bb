"""The `rnn` experiment end to end at smoke scale: run folder, figures, report sections, summary numbers."""

import json

from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments.base import run_experiment


def test_rnn_experiment_smoke(tmp_path):
    path = run_experiment(EXPERIMENTS.get("rnn"), scale="smoke", runs_root=tmp_path, device="cpu", verbose=False,
                          overrides=["cells=elman,reset,lipschitz-structured", "tbptt_compare=0,3"])
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary["cells"]) == {"elman", "reset", "lipschitz-structured"}
    assert set(summary["tbptt"]) == {"full", "3"}
    assert summary["reset"]["train_acc"] == 1.0 and 0 <= summary["reset"]["spread_ratio"]
    assert summary["padding_bucketed"] < summary["padding_random"]
    assert set(summary["clipping"]) == {"no clipping", "clip by norm (1)", "clip by value (0.01)"}
    assert summary["clipping"]["clip by norm (1)"]["median_cos"] > 0.999  # norm clipping keeps the direction
    for fig in ("cells_curves", "grad_dx", "grad_dh", "state_norms", "reset_gate", "reset_overfit", "clip_loss",
                "clip_cos", "clip_scale", "clip_raw_norm"):
        assert (path / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    html = (path / "report.html").read_text()
    for section in ("F1. Accuracy of each cell", "F1. Truncated backpropagation", "F2. The reset-gate cell",
                    "F3. Lipschitz RNN", "F4. Gradient clipping", "Why sigmoid"):
        assert section in html, section


def test_rnn_experiment_wordpiece_three_classes(tmp_path):
    path = run_experiment(EXPERIMENTS.get("rnn"), scale="smoke", runs_root=tmp_path, device="cpu", verbose=False,
                          overrides=["cells=torch", "tbptt_compare=0", "classes=negative,neutral,positive",
                                     "tokenizer=wordpiece", "clip_steps=2", "reset_steps=5"])
    summary = json.loads((path / "summary.json").read_text())
    assert summary["vocab"] == 30522 and set(summary["cells"]) == {"torch"}
    assert 0.3 < summary["majority_acc"] < 0.6  # three classes
    assert "WordPiece" in (path / "report.html").read_text()
