"""Hostile submissions, one test each: each is judged right (a failing verdict, hence a non-zero `check` exit,
with a readable reason and no traceback), within its time limit, and the grader is healthy afterwards.

All run through one fork server with small limits (wall 5 s) so the file stays fast; test_check_cli.py
shows the fresh-interpreter path gives the same verdicts.
"""

from pathlib import Path

import pytest
import torch

from torchdojo.commands.check_cmd import exit_code
from torchdojo.verify.sandbox import ForkServer, Limits, Verdict
from torchdojo.verify.text import format_output, format_verdict

SUBMISSIONS = Path(__file__).parent / "submissions"
LIMITS = Limits(wall_s=5, cpu_s=10, memory_mb=1024, file_mb=16, nproc=16, output_kb=4)
NUMERIC = {"parameters", "forward", "grad x", "grad weight", "grad bias"}


@pytest.fixture(scope="module")
def server() -> ForkServer:
    with ForkServer() as s:
        yield s
        assert s.alive and s.restarts == 0  # nothing a submission did reached the server


def check(server: ForkServer, name: str, **kw: object) -> Verdict:
    spec = name if ":" in name else f"{SUBMISSIONS / name}:Conv2d"
    verdict = server.check("conv2d", spec, max_examples=2, limits=LIMITS, **kw)
    text = format_verdict(verdict, "torch.nn.Conv2d", LIMITS) + format_output(verdict, LIMITS)
    assert "Traceback" not in text
    assert verdict.seconds < LIMITS.wall_s + 30
    assert server.alive
    return verdict


def failing(verdict: Verdict) -> set[str]:
    return {p.name for p in verdict.properties if not p.passed}


def test_correct_submission_passes(server: ForkServer) -> None:
    v = check(server, "correct_conv.py")
    assert v.ok and exit_code(v) == 0 and v.failure is None, v
    assert {p.name for p in v.properties} == NUMERIC | {"rules (source)", "rules (ops)"}
    assert all(p.runs == v.cases for p in v.properties if p.name in NUMERIC) and v.cases == 20


def test_exit_at_import(server: ForkServer) -> None:
    v = check(server, "exit_at_import.py")
    assert exit_code(v) == 1 and v.failure_kind == "process"
    assert v.failure == "the submission ended the process (exit code 0) before its results were written"
    assert not any(p.passed for p in v.properties if p.name in NUMERIC)


def test_exit_in_forward(server: ForkServer) -> None:
    v = check(server, "exit_in_forward.py")
    assert exit_code(v) == 1 and "ended the process (exit code 0)" in v.failure


def test_sys_exit_at_import(server: ForkServer) -> None:
    v = check(server, "sys_exit.py")
    assert exit_code(v) == 2 and v.failure_kind == "load"
    assert "sys_exit.py failed: SystemExit: 0 (sys_exit.py, line 5)" in v.failure


@pytest.mark.parametrize("name", ["subclass_conv.py", "torch_conv2d.py", "builtin_fconv.py"])
def test_builtin_convolution_fails_the_rules(server: ForkServer, name: str) -> None:
    v = check(server, name)
    assert v.failure is None and exit_code(v) == 1
    assert failing(v) == {"rules (source)", "rules (ops)"}  # the numbers match: only the rules catch it
    ops = next(p.detail for p in v.properties if p.name == "rules (ops)")
    assert "aten.convolution in forward" in ops and "aten.convolution_backward in backward" in ops
    src = next(p.detail for p in v.properties if p.name == "rules (source)")
    assert f"{name}, line " in src


def test_builtin_allowed_with_allow_builtin(server: ForkServer) -> None:
    v = check(server, "subclass_conv.py", allow_builtin=True)
    assert v.ok and not any(p.name.startswith("rules") for p in v.properties)


def test_patching_builtins_at_import_does_not_fool_the_reference(server: ForkServer) -> None:
    v = check(server, "patch_builtin.py")
    assert exit_code(v) == 1 and {"forward", "rules (source)"} <= failing(v)
    assert "output: max |diff|" in next(p.detail for p in v.properties if p.name == "forward")
    x, w = torch.randn(1, 1, 3, 3), torch.randn(1, 1, 2, 2)
    assert torch.nn.functional.conv2d(x, w).abs().sum() > 0  # nothing was patched here


def test_default_dtype_change_stays_in_the_child(server: ForkServer) -> None:
    v = check(server, "default_dtype.py")
    assert exit_code(v) == 1 and failing(v) == {"forward"}
    assert "output has dtype float64, torch gives float32" in next(
        p.detail for p in v.properties if p.name == "forward"
    )
    assert torch.get_default_dtype() == torch.float32
    assert check(server, "correct_conv.py").ok  # the next submission is unaffected


def test_raising_in_init(server: ForkServer) -> None:
    v = check(server, "raise_init.py")
    assert exit_code(v) == 1 and NUMERIC <= failing(v)
    assert "constructor raised RuntimeError: not written yet (raise_init.py, line 8)" in v.properties[0].detail


def test_wrong_shape(server: ForkServer) -> None:
    v = check(server, "wrong_shape.py")
    assert exit_code(v) == 1 and "forward" in failing(v) and "parameters" not in failing(v)
    assert "output has shape" in next(p.detail for p in v.properties if p.name == "forward")


def test_huge_wrong_output_is_judged_by_its_shape(server: ForkServer) -> None:
    v = check(server, "huge_output.py")
    assert v.failure is None and "forward" in failing(v)
    assert "output has shape (6291456,), torch gives (1, 4, 6, 6)" in next(
        p.detail for p in v.properties if p.name == "forward"
    )


def test_wrong_dtype(server: ForkServer) -> None:
    v = check(server, "wrong_dtype.py")
    assert exit_code(v) == 1 and failing(v) == {"forward"}
