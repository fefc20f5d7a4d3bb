"""Every user error at the command line is a short `error:` + `fix:` on stderr, a non-zero exit code,
no traceback, and leaves earlier run folders untouched."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import file_snapshot, write_idx_dataset

from torchdojo.cli import main

RUN = ["run", "ladder", "--scale", "smoke", "--device", "cpu", "--quiet"]


@pytest.fixture
def env(tmp_path, data_env, smoke_runs, monkeypatch):
    """An isolated working folder; an earlier run (copied) in the runs folder the commands write to."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    earlier = runs / "ladder" / smoke_runs[0].name
    shutil.copytree(smoke_runs[0], earlier)
    return {"runs": runs, "earlier": earlier, "data_dir": data_env["data_dir"], "before": file_snapshot(earlier)}


def _check(rc: int, err: str, problem: str, fix: str) -> None:
    assert rc != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and problem in err, err
    assert any(line.strip().startswith("fix: ") for line in lines), err
    assert fix in err.split("fix: ", 1)[1], err
    assert len(lines) <= 12, err  # short


def _corrupt_fashion(data_dir: Path) -> None:
    folder = data_dir / "fashion-mnist"
    write_idx_dataset(folder, gz=True)
    for f in folder.iterdir():
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))


def _truncated_copy(env: dict) -> Path:
    broken = env["runs"] / "ladder" / "broken"
    shutil.copytree(env["earlier"], broken)
    (broken / "summary.json").unlink()  # an interrupted run (a finished one is left alone by --resume)
    last = broken / "checkpoints" / "logreg" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    return broken


CASES = {
    "unknown experiment": (["run", "ladderr"], "unknown experiment 'ladderr'", "did you mean 'ladder'?"),
    "unknown model (rung)": ([*RUN, "--rungs", "logreg,resnet"], "unknown rung 'resnet'", "logreg"),
    "unknown model (calc)": (["calc", "nosuchnet", "--input", "3x32x32"], "unknown model", "torchdojo list models"),
    "unknown dataset": ([*RUN, "--set", "dataset=cifar100"], "unknown dataset 'cifar100'", "did you mean 'cifar10'?"),
    "unknown dataset (data)": (["data", "--download", "fashion"], "unknown dataset", "fashion-mnist"),
    "bad --set key": ([*RUN, "--set", "train.lrr=0.1"], "unknown config key 'train.lrr'", "train.lr"),
    "bad --set syntax": ([*RUN, "--set", "train.lr"], "bad --set", "key=value"),
    "bad --set value": (
        [*RUN, "--set", "train.optimizer=rmsprop"],
        "bad value 'rmsprop' for train.optimizer",
        "sgd, adam, adamw",
    ),
    "bad --set number": ([*RUN, "--set", "train.epochs=zero"], "train.epochs", "int"),
    "bad --set range": ([*RUN, "--set", "train.epochs=0"], "train.epochs must be >= 1", "--set train.epochs"),
    "unknown preset": ([*RUN, "--preset", "imagenet"], "unknown preset 'imagenet'", "cifar10"),
    "unknown device": ([*RUN, "--device", "tpu"], "unknown device 'tpu'", "cpu"),
    "missing dataset": (
        [*RUN, "--set", "dataset=cifar10", "--data-dir", "{data_dir}"],
        "dataset 'cifar10' not found",
        "--download",
    ),
    "wrong checksum": (
        [*RUN, "--set", "dataset=fashion-mnist", "--data-dir", "{data_dir}"],
        "fashion-mnist/t",
        "--no-verify",
    ),
    "truncated checkpoint": ([*RUN, "--resume", "{broken}"], "truncated or corrupt", "without --resume"),
    "resume a non-run": ([*RUN, "--resume", "{data_dir}"], "is not a run folder", "run"),
    "resume another experiment's run": (
        ["run", "transfer", "--resume", "{earlier}", "--quiet"],
        "is a run of 'ladder', not 'transfer'",
        "torchdojo run ladder --resume",
    ),
}


def _args(args: list[str], env: dict) -> list[str]:
    subs = {"{data_dir}": str(env["data_dir"]), "{earlier}": str(env["earlier"])}
    if "{broken}" in args:
        subs["{broken}"] = str(_truncated_copy(env))
    out = [subs.get(a, a) for a in args]
    return [*out, "--runs-dir", str(env["runs"])] if out[0] == "run" else out


@pytest.mark.parametrize("case", CASES)
def test_cli_errors_in_process(case, env, capsys):
    args, problem, fix = CASES[case]
    if case == "wrong checksum":
        _corrupt_fashion(env["data_dir"])
    rc = main(_args(args, env))
    _check(rc, capsys.readouterr().err, problem, fix)
    assert file_snapshot(env["earlier"]) == env["before"]  # the earlier run is untouched, byte for byte


@pytest.mark.parametrize("case", ["unknown experiment", "wrong checksum", "truncated checkpoint"])
def test_cli_errors_in_a_subprocess(case, env):
    args, problem, fix = CASES[case]
    if case == "wrong checksum":
        _corrupt_fashion(env["data_dir"])
    proc = subprocess.run(
        [sys.executable, "-m", "torchdojo", *_args(args, env)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        timeout=300,
    )
    _check(proc.returncode, proc.stderr, problem, fix)
    assert proc.returncode == 2
    assert file_snapshot(env["earlier"]) == env["before"]


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "torchdojo" in capsys.readouterr().out
