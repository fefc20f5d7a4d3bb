"""A run killed with SIGKILL mid-epoch and resumed ends with exactly the metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["run", "ladder", "--scale", "smoke", "--device", "cpu", "--rungs", "mlp,cnn", "--set", "dataset=digits",
        "--set", "train_subset=0", "--set", "train.max_batches=0", "--set", "train.epochs=3",
        "--set", "train.batch_size=16", "--quiet"]


def _cli(args: list[str], runs: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in both runs: bit-identical CPU maths
    return subprocess.Popen([sys.executable, "-m", "torchdojo", *args, "--runs-dir", str(runs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _only_run(runs: Path) -> Path:
    (run,) = list((runs / "ladder").iterdir())
    return run


def _numbers(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    ref = _cli(ARGS, tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    ref_run = _only_run(tmp_path / "ref")

    victim = _cli(ARGS, tmp_path / "killed")
    deadline = time.time() + 300
    last = None
    while time.time() < deadline:  # kill as soon as the CNN's first epoch is checkpointed: epoch 2 is running
        runs = list((tmp_path / "killed" / "ladder").glob("*/checkpoints/cnn/last.pt"))
        if runs:
            last = runs[0]
            break
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.005)
    assert last is not None, "the run never reached the CNN rung"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run = _only_run(tmp_path / "killed")
    assert not (run / "summary.json").exists(), "the kill came too late: the run had finished"

    resumed = _cli([*ARGS, "--resume", str(run)], tmp_path / "unused")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed after epoch" in err or "--quiet" in ARGS

    assert _numbers(run) == _numbers(ref_run)
    ref_summary = json.loads((ref_run / "summary.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    for rung in ("mlp", "cnn"):
        for key in ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "best_epoch"):
            assert summary["rungs"][rung][key] == ref_summary["rungs"][rung][key], (rung, key)
    assert not list(run.rglob("*.tmp")), "a temp file was left behind"
