"""Hostile submissions, one test each: each is judged right (a failing verdict, hence a non-zero `check` exit,
with a readable reason and no traceback), within its time limit, and the grader is healthy afterwards.

All run through one fork server with small limits (wall 5 s) so the file stays fast; test_check_cli.py
shows the fresh-interpreter path gives the same verdicts.
"""

import os
import subprocess
import time
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


def test_endless_loop_times_out(server: ForkServer) -> None:
    t = time.monotonic()
    v = check(server, "endless_loop.py")
    assert v.failure == "timed out after 5 s" and exit_code(v) == 1
    assert time.monotonic() - t < LIMITS.wall_s + 20


def test_50_gb_allocation(server: ForkServer) -> None:
    v = check(server, "huge_alloc.py")
    assert v.failure == "used more than 1024 MB of memory" and exit_code(v) == 1
    assert "can't allocate memory" in next(p.detail for p in v.properties if p.name == "forward")


def _alive(pattern: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if pattern in line and "ps -eo" not in line]


def test_fork_of_many_processes_is_bounded_and_killed(server: ForkServer) -> None:
    v = check(server, "fork_many.py")
    assert exit_code(v) == 1
    assert "BlockingIOError" in next(p.detail for p in v.properties if p.name == "forward")  # RLIMIT_NPROC
    assert v.failure.startswith("left ") and v.failure.endswith("processes running after it finished (all killed)")
    n = int(v.failure.split()[1])
    assert 1 <= n <= LIMITS.nproc + 8


def test_child_process_left_running_is_killed(server: ForkServer) -> None:
    v = check(server, "left_running.py")
    assert v.failure == "left 1 process running after it finished (all killed)" and exit_code(v) == 1
    assert not failing(v)  # its numbers were right: only the leftover process fails it
    assert _alive("sleep 317.25") == []


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


def test_cpu_time_limit(server: ForkServer) -> None:
    v = server.check("conv2d", f"{SUBMISSIONS / 'endless_loop.py'}:Conv2d", max_examples=0,
                     limits=Limits(wall_s=20, cpu_s=1))  # fmt: skip
    assert v.failure == "used more than 1 s of CPU time" and v.seconds < 15


@pytest.mark.skipif(os.geteuid() != 0, reason="without root there is no user to drop to (see docs/SECURITY.md)")
def test_writing_outside_its_folder_is_refused(server: ForkServer, tmp_path: Path) -> None:
    outside, here = tmp_path / "escaped.txt", Path.cwd() / "ESCAPED_BY_SUBMISSION.txt"
    sub = tmp_path / "writer.py"
    sub.write_text(
        "from pathlib import Path\n"
        "Path('inside.txt').write_text('its own empty temp folder')\n"
        f"Path({str(outside)!r}).write_text('x')\n"
        f"Path({str(here)!r}).write_text('x')\n"
        "class Conv2d: pass\n"
    )
    v = check(server, f"{sub}:Conv2d")
    assert exit_code(v) != 0 and "PermissionError" in v.failure
    assert not outside.exists() and not here.exists()
    assert not (tmp_path / "inside.txt").exists() and not (Path.cwd() / "inside.txt").exists()


def test_file_size_limit(server: ForkServer) -> None:
    v = check(server, "big_file.py")
    assert exit_code(v) == 2 and "OSError: [Errno 27] File too large (big_file.py, line 5)" in v.failure


def test_20_mb_of_printing(server: ForkServer) -> None:
    v = check(server, "print_flood.py")
    assert v.failure.startswith("printed more than 16 MB") and exit_code(v) == 1
    assert len(v.stdout.encode()) < 5 * 1024 and "more bytes not shown" in v.stdout
    assert "x" * 100 in v.stdout


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


def test_environment_is_scrubbed(server: ForkServer, tmp_path: Path) -> None:
    os.environ["TORCHDOJO_TEST_SECRET"] = "hunter2"
    sub = tmp_path / "env.py"
    sub.write_text(
        "import os, socket\n"
        "print(sorted(os.environ))\n"
        "print('cwd', os.getcwd(), os.listdir('.'))\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    print('network: yes')\n"
        "except OSError:\n    print('network: no')\n"
        "class Conv2d: pass\n"
    )
    try:
        v = check(server, f"{sub}:Conv2d")
    finally:
        del os.environ["TORCHDOJO_TEST_SECRET"]
    assert "TORCHDOJO_TEST_SECRET" not in v.stdout and "hunter2" not in v.stdout
    assert "cwd /tmp/torchdojo-check-" in v.stdout and "/work []" in v.stdout
    assert "network: no" in v.stdout or "network not isolated on this platform" in " ".join(v.notes)
