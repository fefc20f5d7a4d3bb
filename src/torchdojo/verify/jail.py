"""Run one submission in a jailed fork and supervise it until nothing it started is left.

`supervise` (trusted code: it never runs the submission) forks the jailed process, which enters the jail
(`_enter_jail`: new session, no network where the kernel allows a new network namespace, an unprivileged
user when the grader runs as root, rlimits, an empty working directory, a scrubbed environment) and runs the
harness. The supervisor drains its stdout/stderr (keeping the first `output_kb` of each), enforces the wall
clock and the output cap, and, as a child subreaper, collects and SIGKILLs every process the submission
left behind (orphans are re-parented to it, even those that called setsid). Its findings go to
`status.json`, written after the jailed process and all its descendants are dead.
"""

import ctypes
import json
import os
import resource
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOBODY = 65534  # the jailed user when the grader runs as root
_PR_SET_CHILD_SUBREAPER, _PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS = 36, 8, 38
_CAP_DAC_READ_SEARCH, _CAP_VERSION_3 = 2, 0x20080522
_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
_LIBC = ctypes.CDLL(None, use_errno=True)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _tasks_of(uid: int) -> int:
    """How many tasks (threads count, as RLIMIT_NPROC counts them) the user runs now."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return n


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _new_network(root: bool) -> str | None:
    """A new, empty network namespace (loopback down, no route out); a note when the kernel refuses."""
    flags = _CLONE_NEWNET if root else _CLONE_NEWNET | _CLONE_NEWUSER
    uid, gid = os.getuid(), os.getgid()
    if _LIBC.unshare(flags) != 0:
        return f"network not isolated on this platform (unshare: {os.strerror(ctypes.get_errno())})"
    if not root:  # map our own ids in the new user namespace so files keep their owner
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    return None


def _drop_root() -> list[str]:
    """Become `nobody`, keeping only CAP_DAC_READ_SEARCH: the submission reads what root reads (Python's own
    files may live under /root), writes only where nobody may, and RLIMIT_NPROC binds it (it never binds root)."""
    _LIBC.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(1 << _CAP_DAC_READ_SEARCH, 1 << _CAP_DAC_READ_SEARCH, 0, 0, 0, 0)
    if _LIBC.capset(header, data) != 0:
        return [f"could not keep read access after dropping root ({os.strerror(ctypes.get_errno())})"]
    return []


def _enter_jail(work: Path, limits: dict[str, Any]) -> list[str]:
    """In the forked child, before the submission is imported; returns notes on what could not be applied."""
    notes = []
    os.setsid()
    root = os.geteuid() == 0
    note = _new_network(root)
    if note:
        notes.append(note)
    if root:
        notes += _drop_root()
    _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary can give privileges back
    mb = 1024 * 1024
    cpu = max(1, int(limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    address = _vm_bytes() + int(limits["memory_mb"]) * mb
    resource.setrlimit(resource.RLIMIT_AS, (address, address))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["file_mb"]) * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    tasks = _tasks_of(os.getuid()) + int(limits["nproc"])
    resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))
    os.chdir(work)
    os.environ.clear()
    os.environ.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME=str(work),
        TMPDIR=str(work),
        LANG="C.UTF-8",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return notes


def _jailed(job_dir: Path, limits: dict[str, Any], harness: Callable[[Path, list[str]], None], fds: tuple) -> None:
    """The forked child: wire stdio to the supervisor's pipes, enter the jail, run the harness, exit."""
    code = 0
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.closerange(3, 1 << 16)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        notes = _enter_jail(job_dir / "work", limits)
        harness(job_dir, notes)
    except BaseException:  # noqa: BLE001 - whatever happened, the missing result says it failed
        traceback.print_exc()  # into the captured stderr, shown as the run's output
        code = 70
    for stream in (sys.stdout, sys.stderr):  # what the submission printed is still in Python's buffers
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class _Drain:
    """Keep the first `keep` bytes of a pipe and count the rest."""

    def __init__(self, keep: int):
        self.keep, self.data, self.total = keep, bytearray(), 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.keep - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _kill_leftovers(pid: int) -> int:
    """SIGKILL the jailed process group and every orphan re-parented to us; how many processes were found."""
    seen: set[int] = set()
    for _ in range(10000):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        kids = _children(os.getpid())
        if not kids:
            return len(seen)
        for k in kids:
            seen.add(k)
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        time.sleep(0.002)
    return len(seen)


def supervise(job_dir: Path, limits: dict[str, Any], harness: Callable[[Path, list[str]], None]) -> dict[str, Any]:
    """Fork the jailed run of `harness`, watch it, clean up after it; the status the parent judges by."""
    _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _jailed(job_dir, limits, harness, (out_w, err_w))
    os.close(out_w)
    os.close(err_w)
    keep = int(limits["output_kb"]) * 1024
    drains = {out_r: _Drain(keep), err_r: _Drain(keep)}
    status: dict[str, Any] = {"timed_out": False, "output_exceeded": False}
    code = _watch(pid, drains, status, start, limits)
    left = _kill_leftovers(pid)
    _drain_rest(drains)
    status.update(
        seconds=time.monotonic() - start,
        left_running=left if code is not None else 0,
        stdout=drains[out_r].text(),
        stderr=drains[err_r].text(),
        stdout_bytes=drains[out_r].total,
        stderr_bytes=drains[err_r].total,
        stdout_kept=len(drains[out_r].data),
        stderr_kept=len(drains[err_r].data),
    )
    if code is not None:
        status.update(
            exit=os.WEXITSTATUS(code) if os.WIFEXITED(code) else None,
            signal=signal.Signals(os.WTERMSIG(code)).name if os.WIFSIGNALED(code) else None,
        )
    return status


def _watch(pid: int, drains: dict[int, _Drain], status: dict[str, Any], start: float, limits: dict[str, Any]) -> Any:
    """Until the jailed process ends: drain its output, stop it at the wall clock or the output cap."""
    pidfd = os.pidfd_open(pid)
    sel = selectors.DefaultSelector()
    for fd in drains:
        sel.register(fd, selectors.EVENT_READ)
    sel.register(pidfd, selectors.EVENT_READ)
    cap = int(limits["file_mb"]) * 1024 * 1024
    code = None
    try:
        while True:
            left = start + float(limits["wall_s"]) - time.monotonic()
            if left <= 0:
                status["timed_out"] = True
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                if key.fd == pidfd:
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                drains[key.fd].feed(chunk)
            if sum(d.total for d in drains.values()) > cap:
                status["output_exceeded"] = True
                break
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                return code
            code = None
    finally:
        sel.close()
        os.close(pidfd)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        os.kill(pid, signal.SIGKILL)
    _, code = os.waitpid(pid, 0)
    return code


def _drain_rest(drains: dict[int, _Drain]) -> None:
    for fd, d in drains.items():
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 65536):
                d.feed(chunk)
        except BlockingIOError:
            pass
        os.close(fd)


def write_status(job_dir: Path, status: dict[str, Any]) -> None:
    """status.json in the job folder, by rename (replacing whatever the submission may have put there)."""
    tmp = job_dir / f".status.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, job_dir / "status.json")
