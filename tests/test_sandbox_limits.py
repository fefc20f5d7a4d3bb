"""Hostile submissions against the limits, one test each (see test_sandbox.py): time, CPU, memory, processes,
files, output, environment. Same fork-server fixture and helpers, a server of its own."""

import os
import subprocess
import time
from pathlib import Path

import pytest
from test_sandbox import LIMITS, SUBMISSIONS, check, failing

from torchdojo.commands.check_cmd import exit_code
from torchdojo.verify.sandbox import ForkServer, Limits


@pytest.fixture(scope="module")
def server() -> ForkServer:
    with ForkServer() as s:
        yield s
        assert s.alive and s.restarts == 0  # nothing a submission did reached the server


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


def test_environment_is_scrubbed(server: ForkServer, tmp_path: Path) -> None:
    os.environ["TORCHDOJO_TEST_SECRET"] = "hunter2"
    sub = tmp_path / "env.py"
    sub.write_text(
        "import os, socket\n"
        "print(sorted(os.environ))\n"
        "print('\\x1b[2J\\x1b[31mterminal escape')\n"
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
    assert "\x1b" not in v.stdout and "\ufffd[2J\ufffd[31mterminal escape" in v.stdout
    assert "cwd /tmp/torchdojo-check-" in v.stdout and "/work []" in v.stdout
    assert "network: no" in v.stdout or "network not isolated on this platform" in " ".join(v.notes)
