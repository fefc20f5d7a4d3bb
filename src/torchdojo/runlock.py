"""One writer at a time for a run folder: `RunLock` (flock on RUN_DIR/.lock, naming its holder) and `locked`."""

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchdojo.errors import DojoError

try:
    import fcntl
except ImportError:  # not POSIX: run folders are not locked
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """An exclusive lock on a run folder (flock on RUN_DIR/.lock) for as long as one process writes it.

    The lock file holds the holder's pid, host, start time and command line, so a second writer is refused
    with a message naming it. The kernel releases a flock when its process ends in any way (exit, crash,
    SIGKILL), so a stale lock file never blocks anyone; `release` deletes the file while still holding it,
    and `acquire` checks that the file it locked is still the one in the folder."""

    NAME = ".lock"

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, run_dir: Path | str) -> "RunLock":
        """Lock `run_dir` (which must exist) or raise a DojoError naming the process that holds it."""
        path = Path(run_dir) / cls.NAME
        if fcntl is None:
            return cls(path, None)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise _held_error(Path(run_dir), holder) from None
            except OSError as e:  # a filesystem without locks (some network mounts): say so, go on unlocked
                os.close(fd)
                print(
                    f"warning: {path} cannot be locked ({e.strerror}); do not resume this run twice at once",
                    file=sys.stderr,
                )
                return cls(path, None)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                break
            os.close(fd)  # the previous holder deleted the file between our open and our lock: again
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
        }
        lock = cls(path, fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except BaseException:  # a full disk: no lock left held by this process
            lock.release()
            raise
        return lock

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: see acquire
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(run_dir: Path | str) -> Iterator[RunLock]:
    """`with locked(run_dir):` write a run folder as its only writer (a DojoError if another process is one)."""
    lock = RunLock.acquire(run_dir)
    try:
        yield lock
    finally:
        lock.release()


def _lock_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file; it writes right after locking, so wait a moment for it."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(os.pread(fd, 65536, 0).decode())
            if isinstance(info, dict):
                return info
        time.sleep(0.05)
    return {}


def _held_error(run_dir: Path, holder: dict[str, Any]) -> DojoError:
    pid, host, since = holder.get("pid"), holder.get("host", "?"), holder.get("since", "?")
    command = " ".join(map(str, holder.get("argv") or [])) if isinstance(holder.get("argv"), list) else ""
    command = f": {command[:200]}{'…' if len(command) > 200 else ''}" if command else ""
    if pid is None:  # it has not said who it is (yet)
        who, stop = "another process", f"`fuser -v {run_dir / RunLock.NAME}` shows its pid"
    else:
        who = f"another torchdojo process (pid {pid} on {host}, since {since}{command})"
        stop = f"kill {pid}" if host == socket.gethostname() else f"kill {pid} on {host}"
    return DojoError(
        f"{run_dir} is in use by {who}; a run folder takes one writer at a time",
        f"wait for that process to end (or stop it: {stop}); then, if the run had not finished, resume it "
        "with the same `torchdojo run ... --resume` command",
    )
