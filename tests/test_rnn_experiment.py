"""The `rnn` experiment end to end at smoke scale: stages trained through the engine (metrics rows, checkpoints,
recorded configs), the validation split, schedules and early stopping applied, the reset stage stopped by its
target, the report, and an exact resume after SIGKILL."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from torchdojo.errors import DojoError
from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments import rnn as rnn_exp
from torchdojo.experiments.base import build_config, run_experiment

RNN = EXPERIMENTS.get("rnn")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_rnn_experiment_smoke(tmp_path):
    path = run_experiment(
        RNN,
        scale="smoke",
        runs_root=tmp_path,
        device="cpu",
        verbose=False,
        overrides=["cells=elman,reset,lipschitz-structured", "tbptt_compare=0,3"],
    )
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary["cells"]) == {"elman", "reset", "lipschitz-structured"}
    assert set(summary["tbptt"]) == {"full", "3"}
    assert summary["tbptt"]["full"]["stage"] == "cell-elman"  # the cell comparison's Elman model, not retrained
    assert summary["reset"]["train_acc"] == 1.0 and 0 <= summary["reset"]["spread_ratio"]
    assert 0 <= summary["reset"]["unseen_prefix_acc"] <= 1 and "gate_at_reset" in summary["reset"]
    assert summary["reset"]["learned_to_reset_reason"] and "unseen_prefix_acc" in summary["reset"]["elman"]
    assert summary["padding_bucketed"] < summary["padding_random"]
    assert set(summary["clipping"]) == {"no clipping", "clip by norm (1)", "clip by value (0.01)"}
    assert summary["clipping"]["clip by norm (1)"]["median_cos"] > 0.999  # norm clipping keeps the direction
    for run in summary["clipping"].values():  # each clipping run checked against the majority-class rate
        assert isinstance(run["learned"], bool) and run["learned_reason"] and 0.5 <= run["majority_rate"] <= 1
    norms = summary["state_norms"]
    assert set(norms) == {"elman", "reset", "lipschitz-structured"}
    assert all(v["verdict"] in ("bounded", "rising", "exceeds the bound") for v in norms.values())
    assert norms["elman"]["max"] < norms["elman"]["bound"]  # a tanh state is under sqrt(H) by construction
    assert summary["sentences"] == {"train": 360, "val": 40, "test": 200}

    # every stage trained through fit: metrics rows, best/last checkpoints, the config it ran in config.json
    stages = [
        "cell-elman",
        "cell-reset",
        "cell-lipschitz-structured",
        "tbptt-3",
        "reset-overfit",
        "reset-control-elman",
    ]
    rows = _rows(path)
    assert list(dict.fromkeys(r["stage"] for r in rows)) == stages
    recorded = json.loads((path / "config.json").read_text())["stages"]
    assert set(recorded) == set(stages)
    for stage in stages:
        assert {p.name for p in (path / "checkpoints" / stage).iterdir()} == {"best.pt", "last.pt"}, stage
    for stage in stages[:4]:  # the train group: validated every epoch
        (row,) = [r for r in rows if r["stage"] == stage]  # smoke: 1 epoch
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(row)
        assert recorded[stage]["lr"] == 2e-3 and recorded[stage]["max_batches"] == 3
    for cell in summary["cells"].values():
        assert {"val_acc", "test_acc", "test_loss", "best_epoch"} <= set(cell)

    # the reset demo: its own TrainConfig (reset_* fields), one full-batch step per epoch, stopped by its target
    reset_rows = [r for r in rows if r["stage"] == "reset-overfit"]
    assert len(reset_rows) == summary["reset"]["steps"] < 60 and summary["reset"]["reached_target"]
    assert reset_rows[-1]["train_acc"] == 1.0 and reset_rows[-1]["train_loss"] < 0.01
    assert not any(r["train_acc"] == 1.0 and r["train_loss"] < 0.01 for r in reset_rows[:-1])
    assert "val_acc" not in reset_rows[0]
    assert recorded["reset-overfit"]["lr"] == 1e-2 and recorded["reset-overfit"]["epochs"] == 60
    assert recorded["reset-overfit"]["batch_size"] == 9  # all examples: 3 prefixes x 3 suffixes

    for fig in (
        "cells_curves",
        "grad_dx",
        "grad_dh",
        "state_norms",
        "reset_gate",
        "reset_overfit",
        "clip_loss",
        "clip_cos",
        "clip_scale",
        "clip_raw_norm",
    ):
        assert (path / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    html = (path / "report.html").read_text()
    for section in (
        "F1. Accuracy of each cell",
        "F1. Truncated backpropagation",
        "F2. The reset-gate cell",
        "F3. Lipschitz RNN",
        "F4. Gradient clipping",
        "Why sigmoid",
        "validation split",
        "test split",
    ):
        assert section in html, section


def test_validation_split_is_stratified_and_disjoint_from_train_and_test():
    cfg = build_config(rnn_exp, "smoke", overrides=["train_subset=600", "val_fraction=0.2"])
    data = rnn_exp.prepare_data(cfg, SimpleNamespace(data_dir=None, download=False))
    texts = {s: [t for t, _ in data.pairs[s]] for s in rnn_exp.SPLITS}
    assert len(texts["train"]) + len(texts["val"]) == 600 and len(texts["val"]) == 120
    assert not set(texts["val"]) & set(texts["train"]) and not set(texts["val"]) & set(texts["test"])
    share = {s: data.labels[s].count(1) / len(data.labels[s]) for s in ("train", "val")}
    assert abs(share["train"] - share["val"]) < 0.02  # stratified: each class's share kept
    again = rnn_exp.prepare_data(cfg, SimpleNamespace(data_dir=None, download=False))
    assert again.pairs == data.pairs  # seeded
    other = rnn_exp.prepare_data(
        build_config(rnn_exp, "smoke", overrides=["train_subset=600", "val_fraction=0.2", "seed=1"]),
        SimpleNamespace(data_dir=None, download=False),
    )
    assert other.pairs["val"] != data.pairs["val"]


def test_schedule_and_early_stopping_change_what_runs(tmp_path):
    """train.schedule and train.early_stop_patience reach the engine: the lr column follows the cosine, and a
    learning rate too small to change any prediction stops the stage after `patience` epochs without gain."""
    path = run_experiment(
        RNN,
        scale="smoke",
        runs_root=tmp_path,
        device="cpu",
        verbose=False,
        overrides=[
            "cells=elman",
            "tbptt_compare=0",
            "train.epochs=5",
            "train.schedule=cosine",
            "train.early_stop_patience=1",
            "train.lr=1e-9",
            "reset_steps=3",
            "clip_steps=1",
        ],
    )
    rows = [r for r in _rows(path) if r["stage"] == "cell-elman"]
    assert len(rows) == 2  # epoch 2 did not beat epoch 1, patience 1: stopped, 3 of 5 epochs never ran
    assert rows[0]["lr"] > rows[1]["lr"] > 0  # cosine decay per step (constant lr without a schedule)
    recorded = json.loads((path / "config.json").read_text())["stages"]["cell-elman"]
    assert recorded["schedule"] == "cosine" and recorded["early_stop_patience"] == 1
    summary = json.loads((path / "summary.json").read_text())
    assert summary["cells"]["elman"]["epochs"] == 2 and summary["reset"]["steps"] == 3


@pytest.mark.parametrize("key", sorted(rnn_exp.UNUSED))
def test_unused_train_settings_are_refused(key):
    assert {"train.cpu_fusion", "train.channels_last"} <= set(rnn_exp.UNUSED)
    with pytest.raises(DojoError, match=key.replace(".", r"\.")):
        build_config(rnn_exp, "smoke", overrides=[f"{key}=false"])


def test_functions_are_short():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(rnn_exp))
    long = [
        (n.name, n.end_lineno - n.lineno + 1)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80
    ]
    assert not long


def test_rnn_experiment_wordpiece_three_classes(tmp_path):
    path = run_experiment(
        RNN,
        scale="smoke",
        runs_root=tmp_path,
        device="cpu",
        verbose=False,
        overrides=[
            "cells=torch",
            "tbptt_compare=0",
            "classes=negative,neutral,positive",
            "tokenizer=wordpiece",
            "clip_steps=2",
            "reset_steps=5",
        ],
    )
    summary = json.loads((path / "summary.json").read_text())
    assert summary["vocab"] == 30522 and set(summary["cells"]) == {"torch"}
    assert 0.3 < summary["majority_acc"] < 0.6  # three classes
    assert summary["reset"]["steps"] <= 5
    assert "WordPiece" in (path / "report.html").read_text()


ARGS = [
    "run",
    "rnn",
    "--scale",
    "smoke",
    "--device",
    "cpu",
    "--quiet",
    "--set",
    "cells=elman",
    "--set",
    "tbptt_compare=0",
    "--set",
    "train.epochs=3",
    "--set",
    "train.max_batches=0",
    "--set",
    "train_subset=3000",
    "--set",
    "hidden_size=32",
]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path, kill_and_resume) -> None:
    ref_run, run = kill_and_resume(ARGS, tmp_path, wait_for="cell-elman")
    ref, got = (json.loads((r / "summary.json").read_text()) for r in (ref_run, run))
    assert got["cells"] == ref["cells"] and got["reset"] == ref["reset"] and got["clipping"] == ref["clipping"]
    assert len([r for r in _rows(run) if r["stage"] == "cell-elman"]) == 3
