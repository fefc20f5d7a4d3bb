"""Shared fixtures: isolated data locations, writers for the datasets' real binary formats, small data."""

import gzip
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from torchdojo.data import Splits, load_dataset

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty --data-dir, $TORCHDOJO_DATA and $XDG_CACHE_HOME folders: no real dataset is found by accident."""
    dirs = {name: tmp_path / name for name in ("data_dir", "env_data", "cache")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setenv("TORCHDOJO_DATA", str(dirs["env_data"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["cache"]))
    return dirs


def idx_bytes(arr: np.ndarray) -> bytes:
    """An idx file as published: magic 0x00 0x00 <dtype> <ndim>, big-endian uint32 dims, data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    big = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    header = bytes([0, 0, codes[big.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + big.tobytes()


def write_idx_dataset(
    folder: Path, n_train: int = 12, n_test: int = 6, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """The four MNIST-format idx files (28x28 uint8 images, uint8 labels); returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.fixture
def write_idx() -> Callable[..., dict[str, np.ndarray]]:
    return write_idx_dataset


def cifar_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR-10 python batch: 'data' rows of 3072 bytes (R plane, G plane, B plane), 'labels'."""
    rows = images.reshape(len(images), 3 * 32 * 32)
    return pickle.dumps({"batch_label": "fixture", "labels": labels, "data": rows, "filenames": []}, protocol=2)


@pytest.fixture
def digits() -> Splits:
    """scikit-learn's 8x8 digits: the fastest real dataset."""
    return load_dataset("digits")


def file_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), to check that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pytest_configure(config: pytest.Config) -> None:
    # Small shared test machines: one intra-op thread avoids oversubscription; tiny models gain nothing.
    torch.set_num_threads(1)
    # Cached backbone features of test runs go to a throwaway folder, not the user's cache.
    import os
    import tempfile

    os.environ.setdefault("TORCHDOJO_FEATURE_CACHE", tempfile.mkdtemp(prefix="torchdojo-test-features-"))


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two finished smoke ladder runs on digits (read-only: copy one before changing it)."""
    from torchdojo.experiments import ladder
    from torchdojo.experiments.base import run_experiment

    root = tmp_path_factory.mktemp("runs")
    common = ["dataset=digits", "train.max_batches=3"]
    return [
        run_experiment(
            ladder, scale="smoke", overrides=[*common, "rungs=logreg,mlp"], device="cpu", runs_root=root, verbose=False
        ),
        run_experiment(
            ladder,
            scale="smoke",
            overrides=[*common, "rungs=logreg", "seed=1"],
            device="cpu",
            runs_root=root,
            verbose=False,
        ),
    ]


def _cli(args: list[str], runs: Path) -> "subprocess.Popen[str]":
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in both runs: bit-identical CPU maths
    return subprocess.Popen(
        [sys.executable, "-m", "torchdojo", *args, "--runs-dir", str(runs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _only_run(runs: Path) -> Path:
    (experiment,) = list(runs.iterdir())
    (run,) = list(experiment.iterdir())
    return run


def _metric_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def kill_and_resume(args: list[str], tmp_path: Path, wait_for: str, timeout: float = 300) -> tuple[Path, Path]:
    """Run `torchdojo ARGS` to the end (the reference), then again, SIGKILL it as soon as stage `wait_for` has
    checkpointed its first epoch, resume it, and check that metrics.jsonl equals the reference's.
    Returns (reference run folder, resumed run folder)."""
    ref = _cli(args, tmp_path / "ref")
    assert ref.wait(timeout=timeout) == 0, ref.stderr.read()
    ref_run = _only_run(tmp_path / "ref")
    victim = _cli(args, tmp_path / "killed")
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:  # kill as soon as the stage's first epoch is checkpointed
        found = list((tmp_path / "killed").glob(f"*/*/checkpoints/{wait_for}/last.pt"))
        if found:
            last = found[0]
            break
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.005)
    assert last is not None, f"the run never reached stage {wait_for}"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run = _only_run(tmp_path / "killed")
    assert not (run / "summary.json").exists(), "the kill came too late: the run had finished"
    resumed = _cli([*args, "--resume", str(run)], tmp_path / "unused")
    _, err = resumed.communicate(timeout=timeout)
    assert resumed.returncode == 0, err
    assert _metric_rows(run) == _metric_rows(ref_run)
    assert not list(run.rglob("*.tmp")), "a temp file was left behind"
    return ref_run, run


@pytest.fixture(name="kill_and_resume")
def kill_and_resume_fixture() -> Callable[..., tuple[Path, Path]]:
    return kill_and_resume
