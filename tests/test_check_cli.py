"""`torchdojo check` end to end: always isolated (a fresh interpreter per run, no fork server), exit codes,
the report, argument errors. test_check_paths.py shows the fresh path agrees with the fork server's."""

import argparse
from pathlib import Path

import pytest

from torchdojo.commands import check_cmd
from torchdojo.errors import DojoError

SUBMISSIONS = Path(__file__).parent / "submissions"


def check(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    p = argparse.ArgumentParser()
    check_cmd.add_arguments(p)
    rc = check_cmd.main(p.parse_args(list(argv)))
    return rc, capsys.readouterr().out


def test_exit_at_import_is_a_failure_not_exit_0(capsys: pytest.CaptureFixture) -> None:
    rc, out = check(capsys, "conv2d", f"{SUBMISSIONS / 'exit_at_import.py'}:Conv2d", "--max-examples", "2")
    assert rc == 1 and "Traceback" not in out
    reason = "the submission ended the process (exit code 0) before its results were written"
    assert f"FAIL  run: {reason}" in out
    assert "FAIL  forward         0/0 passed  not checked" in out


def test_load_failures_exit_2_without_running_anything(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    rc, out = check(capsys, "conv2d", str(tmp_path / "nope.py") + ":X")
    assert rc == 2 and "FAIL  load: no such file" in out
    rc, out = check(capsys, "conv2d", "no_colon_here.py")
    assert rc == 2 and "write FILE.py:ClassName" in out


def test_bad_arguments_are_dojo_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DojoError, match="--case must be the JSON"):
        check(capsys, "conv2d", "torchdojo.nn.conv:Conv2d", "--case", "{not json")
    huge = '{"init": {}, "shape": {"x": [100000, 100000]}, "dtype": "float32", "seed": 0}'
    with pytest.raises(DojoError, match="case refused: shape of x must be positive ints, at most 4194304"):
        check(capsys, "conv2d", "torchdojo.nn.conv:Conv2d", "--case", huge)
    other = '{"init": {}, "shape": {"y": [1]}, "dtype": "float32", "seed": 0}'
    with pytest.raises(DojoError, match="case refused: its shape must name exactly the inputs x"):
        check(capsys, "conv2d", "torchdojo.nn.conv:Conv2d", "--case", other)
    with pytest.raises(DojoError, match="limit wall_s must be > 0"):
        check(capsys, "conv2d", "torchdojo.nn.conv:Conv2d", "--timeout", "0")
    with pytest.raises(DojoError, match="max_examples must be >= 0"):
        check(capsys, "conv2d", "torchdojo.nn.conv:Conv2d", "--max-examples", "-1")


def test_cli_registration_lists_every_target() -> None:
    from torchdojo.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["check", "not-a-target", "x.py:C"])
    p = argparse.ArgumentParser()
    check_cmd.add_arguments(p)
    for target in ("conv2d", "conv2d-backward", "conv-transpose", "ste", "rnn-cell", "reset-cell", "lipschitz-rnn"):
        assert p.parse_args([target, "x.py:C", "--seed", "3", "--seed", "4"]).seed == [3, 4]
