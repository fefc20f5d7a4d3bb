"""A run killed with SIGKILL mid-epoch and resumed ends with exactly the metrics of an uninterrupted run.

`kill_and_resume` (below, also a fixture for the experiments' own test files) does it for any experiment."""

import json
from pathlib import Path

import pytest

ARGS = [
    "run",
    "ladder",
    "--scale",
    "smoke",
    "--device",
    "cpu",
    "--rungs",
    "mlp,cnn",
    "--set",
    "dataset=digits",
    "--set",
    "train_subset=0",
    "--set",
    "train.max_batches=0",
    "--set",
    "train.epochs=3",
    "--set",
    "train.batch_size=16",
    "--quiet",
]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path, kill_and_resume) -> None:
    ref_run, run = kill_and_resume(ARGS, tmp_path, wait_for="cnn")
    ref_summary = json.loads((ref_run / "summary.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    for rung in ("mlp", "cnn"):
        for key in ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "best_epoch"):
            assert summary["rungs"][rung][key] == ref_summary["rungs"][rung][key], (rung, key)
