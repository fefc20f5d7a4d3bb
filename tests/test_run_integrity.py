"""Run-folder integrity: one writer at a time (a lock naming its holder), resume drops the metrics rows that no
checkpoint holds and the temp files a kill left, a finished run is left alone, files follow the umask, and a
damaged checkpoint, a read-only runs directory or a full disk are clean errors that damage nothing."""

import csv
import errno
import inspect
import io
import json
import os
import random
import shutil
import signal
import stat
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from conftest import _metric_rows

from torchdojo import engine, runs
from torchdojo.cli import main as cli_main
from torchdojo.errors import DojoError
from torchdojo.experiments import ladder
from torchdojo.experiments.base import run_experiment
from torchdojo.report import figures
from torchdojo.runs import RunLock

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000001f15c489"
    "0000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)


@pytest.fixture(autouse=True)
def fast_figures(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures as a 1x1 PNG written where the real one would go (drawing them is most of a smoke run's time and
    none of this file's business), except for tests that ask for the `real_figures` fixture."""
    if "real_figures" not in request.fixturenames:
        _stub_figures(monkeypatch)


def _stub_figures(m: pytest.MonkeyPatch) -> None:
    for name in ("curves", "image_grid", "confusion_matrix", "bars", "line_plot"):
        m.setattr(figures, name, _stub_figure(inspect.signature(getattr(figures, name))))


@pytest.fixture
def real_figures() -> None:
    """Ask for it to draw the real figures."""


def _stub_figure(sig: inspect.Signature):
    def stub(*a, **k) -> Path:
        path = Path(sig.bind(*a, **k).arguments["path"])
        runs.atomic_write_bytes(path, PNG)
        return path

    return stub


class _Child:
    """`torchdojo ARGS` in a forked copy of this process: a real process to SIGKILL, without the seconds a new
    interpreter spends importing torch. Its stdout and stderr go to `log`."""

    def __init__(self, args: list[str], log: Path):
        self.log, self.rc = log, None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            rc = 70
            try:
                with open(log, "w", buffering=1) as f:
                    sys.stdout = sys.stderr = f
                    try:
                        rc = cli_main(args)
                    except BaseException:
                        traceback.print_exc(file=f)
                        rc = 71
            finally:
                os._exit(rc)

    def poll(self) -> int | None:
        """The exit code once it ended (-N: killed by signal N), else None."""
        if self.rc is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.rc = os.waitstatus_to_exitcode(status)
        return self.rc

    def wait(self, timeout: float = 120) -> int:
        deadline = time.time() + timeout
        while self.poll() is None:
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f"process {self.pid} did not end within {timeout} s")
            time.sleep(0.01)
        return self.rc

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.001)

    def output(self) -> str:
        return self.log.read_text()


OVERRIDES = ["dataset=digits", "train.epochs=3", "train.max_batches=2", "train.batch_size=32", "rungs=logreg,mlp"]
CLI_SETTINGS = ["--scale", "smoke", "--device", "cpu", "--quiet"]
for _o in OVERRIDES:
    CLI_SETTINGS += ["--set", _o]


def _new_run(root: Path) -> Path:
    return run_experiment(ladder, scale="smoke", overrides=OVERRIDES, device="cpu", runs_root=root, verbose=False)


def _resume(run: Path) -> Path:
    return run_experiment(ladder, device="cpu", resume=run, verbose=False)


def _cli_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`torchdojo run ladder ARGS` in this process: (exit code, stderr). An exception would fail the test."""
    capsys.readouterr()
    rc = cli_main(["run", "ladder", *args])
    return rc, capsys.readouterr().err


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under `folder`: bytes, mtime and mode."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (p.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def _rows(run: Path) -> list[dict]:
    return _metric_rows(run)


def _assert_consistent(run: Path) -> None:
    """One row per (stage, epoch), metrics.csv the same rows as metrics.jsonl, no temp file, no lock file."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["stage"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)), f"duplicated rows: {keys}"
    with open(run / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["stage"], int(r["epoch"])) for r in table] == keys
    assert [r["train_loss"] for r in table] == [str(r["train_loss"]) for r in rows]
    assert not runs.orphan_temp_files(run) and not [p for p in run.rglob("*") if ".tmp" in p.name]
    assert not (run / ".lock").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run (read-only)."""
    with pytest.MonkeyPatch.context() as m:
        _stub_figures(m)
        return _new_run(tmp_path_factory.mktemp("reference"))


def _interrupted(root: Path, monkeypatch: pytest.MonkeyPatch, stage: str, epoch: int) -> Path:
    """A run stopped as a SIGKILL would stop it: right after stage `stage` logged epoch `epoch`'s metrics row,
    before that epoch's last.pt was written."""
    real_save = engine._Loop.save_last

    class Killed(BaseException):
        pass

    def save_last(loop: engine._Loop, e: int) -> None:
        if loop.stage == stage and e == epoch:
            raise Killed
        real_save(loop, e)

    with monkeypatch.context() as m:
        m.setattr(engine._Loop, "save_last", save_last)
        with pytest.raises(Killed):
            _new_run(root)
    (experiment,) = root.iterdir()
    (run,) = experiment.iterdir()
    assert not (run / "summary.json").exists()
    return run


# --- (a) one writer at a time -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, monkeypatch, capsys, reference):
    run = _interrupted(tmp_path / "runs", monkeypatch, "mlp", 2)
    before = _snapshot(run)
    with RunLock.acquire(run):  # another process (here: this one) is writing the folder
        holder = json.loads((run / ".lock").read_text())
        rc, err = _cli_main(capsys, "--resume", str(run))
        with pytest.raises(DojoError, match=f"pid {os.getpid()}"):  # the library refuses as the CLI does
            _resume(run)
    assert rc == 2 and "Traceback" not in err
    assert f"pid {os.getpid()}" in err and f"since {holder['since']}" in err and "in use" in err
    assert "fix:" in err and "--resume" in err
    assert {k: v for k, v in _snapshot(run).items() if k != ".lock"} == before  # nothing written
    assert not (run / ".lock").exists()  # released (and removed) by its holder
    _resume(run)  # once the holder is gone, the resume runs
    assert _rows(run) == _rows(reference)
    _assert_consistent(run)


def test_the_lock_goes_with_its_process_even_on_sigkill(tmp_path):
    """flock: the kernel releases it when the holder dies, so a stale .lock file never blocks a resume."""
    run = tmp_path / "run"
    run.mkdir()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            RunLock.acquire(run)
            os.write(ready_w, b"1")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    with pytest.raises(DojoError, match=f"pid {pid} on "):
        RunLock.acquire(run)
    os.kill(pid, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL
    assert json.loads((run / ".lock").read_text())["pid"] == pid  # left behind by the kill...
    RunLock.acquire(run).release()  # ...and no obstacle
    assert not (run / ".lock").exists()


def test_concurrent_resumes_of_one_folder(tmp_path, monkeypatch, reference):
    """Two `torchdojo run --resume` of the same folder at once: one resumes, the other is refused (or, had the
    first one finished already, finds nothing to do); metrics.jsonl ends as an uninterrupted run's."""
    run = _interrupted(tmp_path / "runs", monkeypatch, "logreg", 2)
    args = ["run", "ladder", "--quiet", "--resume", str(run)]
    children = [_Child(args, tmp_path / f"resume{i}.log") for i in range(2)]
    results = [(c.wait(), c.output()) for c in children]
    assert sorted(rc for rc, _ in results) in ([0, 0], [0, 2]), results
    assert all("Traceback" not in err for _, err in results), results
    other = [err for rc, err in results if rc == 2 or "already finished" in err]
    assert len(other) == 1, results
    assert "in use by another torchdojo process" in other[0] or "already finished; nothing to do" in other[0]
    assert _rows(run) == _rows(reference)
    _assert_consistent(run)


# --- (b) resume drops the rows no checkpoint holds ----------------------------------------------------------


@pytest.mark.parametrize("stage", ["mlp", "logreg"])
def test_resume_drops_the_rows_of_a_stage_killed_before_its_first_checkpoint(tmp_path, monkeypatch, reference, stage):
    """Killed between a stage's first metrics row and its first last.pt: the stage starts again from epoch 1, and
    its old rows go (they were left in, and epoch 1 was in metrics.jsonl twice)."""
    run = _interrupted(tmp_path / "runs", monkeypatch, stage, 1)
    assert (stage, 1) in [(r["stage"], r["epoch"]) for r in _rows(run)]
    assert not (run / "checkpoints" / stage / "last.pt").exists()
    _resume(run)
    assert _rows(run) == _rows(reference)
    _assert_consistent(run)


def test_resume_repairs_a_cut_line_and_removes_orphan_temp_files(tmp_path, monkeypatch, reference):
    run = _interrupted(tmp_path / "runs", monkeypatch, "mlp", 2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "mlp", "epoch": 3, "train_lo')  # a kill in the middle of an append
    orphans = [
        run / "checkpoints" / "mlp" / ".last.pt.k2j4h5g6.tmp",  # atomic_torch_save's
        run / ".summary.json.a8b7c6d5.tmp",  # atomic_write_bytes'
        run / ".metrics.csv.tmp",  # older fixed names
        run / "figures" / ".cm_mlp.tmp.png",
    ]
    for p in orphans:
        p.write_bytes(b"partial")
    _resume(run)
    assert not any(p.exists() for p in orphans)
    assert _rows(run) == _rows(reference)
    _assert_consistent(run)


# --- (c) a finished run ---------------------------------------------------------------------------------------


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    run = _new_run(tmp_path / "runs")
    before = _snapshot(run)
    time.sleep(0.01)  # a rewrite would show in the mtimes
    rc, err = _cli_main(capsys, "--resume", str(run))
    assert rc == 0 and "already finished; nothing to do" in err
    assert _snapshot(run) == before  # not summary.json, report.html, env files or metrics; no .lock left


# --- (d) temp names and modes -----------------------------------------------------------------------------


def test_files_follow_the_umask(tmp_path, real_figures):
    """Every file of a run (checkpoints, JSON, metrics, figures, report) gets 0o666 less the umask, every folder
    0o777 less it: 022 gives files others can read, 077 private ones (mkstemp's 0600 was both)."""
    for umask in (0o022, 0o077):
        old = os.umask(umask)
        runs._umask.cache_clear()
        try:
            run = _new_run(tmp_path / f"runs{umask:o}")
        finally:
            os.umask(old)
            runs._umask.cache_clear()
        modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*")}
        files = {k: m for k, m in modes.items() if (run / k).is_file()}
        assert {"config.json", "summary.json", "metrics.csv", "report.html", "checkpoints/mlp/last.pt"} <= set(files)
        assert {k: oct(m) for k, m in files.items() if m != 0o666 & ~umask} == {}, oct(umask)
        assert {k: oct(m) for k, m in modes.items() if k not in files and m != 0o777 & ~umask} == {}, oct(umask)


def test_temp_names_are_unique(tmp_path, monkeypatch):
    """Writers of one file never share a temp file: every atomic write (JSON, checkpoint, metrics.csv) renames a
    temp file of its own, so two processes writing one folder cannot take each other's half-written file."""
    seen: list[str] = []
    real = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        real(src, dst)

    monkeypatch.setattr(runs.os, "replace", replace)
    loggers = [runs.MetricsLogger(tmp_path), runs.MetricsLogger(tmp_path)]  # two writers of metrics.csv
    monkeypatch.setattr(runs.MetricsLogger, "_writer", lambda self: False)  # no TensorBoard
    for i in range(3):
        runs.atomic_write_bytes(tmp_path / "report.html", f"{i}".encode())
        runs.atomic_torch_save({"i": i}, tmp_path / "last.pt")
        for logger in loggers:
            logger.log({"stage": "s", "epoch": i, "train_loss": 1.0})
    assert len(seen) == 12 and len(set(seen)) == len(seen), seen
    assert all(n.startswith(".") and n.endswith(".tmp") for n in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.csv", "metrics.jsonl", "report.html"]


# --- (e) damaged checkpoints, read-only and full runs directories -----------------------------------------------


@pytest.mark.parametrize(
    "which,damage",
    [("mlp/last.pt", "empty"), ("logreg/last.pt", "empty"), ("logreg/best.pt", "empty"), ("mlp/last.pt", "half")],
)
def test_damaged_checkpoint_is_a_clean_error(tmp_path, monkeypatch, capsys, reference, which, damage):
    run = _interrupted(tmp_path / "runs", monkeypatch, "mlp", 2)
    path = run / "checkpoints" / which
    path.write_bytes(b"" if damage == "empty" else path.read_bytes()[: path.stat().st_size // 2])
    before = _snapshot(run)
    rc, err = _cli_main(capsys, "--resume", str(run))
    assert rc == 2 and f"error: checkpoint {path}" in err and "Traceback" not in err
    assert ("is empty (0 bytes)" if damage == "empty" else "truncated or corrupt") in err
    assert f"fix: delete the stage's checkpoint folder {path.parent}" in err and "--resume" in err
    assert _snapshot(run) == before  # refused before anything was written
    # The fix as it says: that stage is trained again from its first epoch, the others keep theirs.
    for p in path.parent.iterdir():
        p.unlink()
    path.parent.rmdir()
    rc, err = _cli_main(capsys, "--resume", str(run))
    assert rc == 0, err
    order = lambda r: (r["stage"], r["epoch"])  # noqa: E731 - a re-trained first stage logs after the second
    assert sorted(_rows(run), key=order) == sorted(_rows(reference), key=order)
    _assert_consistent(run)


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):
    """Make a folder read-only: chmod where that binds (not root), else refuse writes in it as the kernel does."""

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
            return
        top = os.path.abspath(folder)

        def inside(path) -> bool:
            return os.path.abspath(os.fspath(path)).startswith(top)

        real_mkdir, real_open = os.mkdir, os.open
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        def mkdir(path, *a, **k):
            if inside(path) and not os.path.isdir(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_mkdir(path, *a, **k)

        def open_(path, flags, *a, **k):
            if inside(path) and flags & write_flags:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)

    return make


def _writable_again(folder: Path) -> None:
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_read_only_runs_directory_is_a_clean_error(tmp_path, capsys, read_only):
    root = tmp_path / "runs"
    root.mkdir()
    read_only(root)
    try:
        rc, err = _cli_main(capsys, *CLI_SETTINGS, "--runs-dir", str(root))
    finally:
        _writable_again(root)
    assert rc == 2 and "Traceback" not in err
    assert f"error: cannot write {root}" in err and "Permission denied" in err
    assert "--runs-dir" in err and "fix:" in err
    assert list(root.iterdir()) == []  # nothing made


def test_read_only_run_folder_is_a_clean_error_on_resume(tmp_path, monkeypatch, capsys, read_only):
    run = _interrupted(tmp_path / "runs", monkeypatch, "mlp", 2)
    before = _snapshot(run)
    read_only(run)
    try:
        rc, err = _cli_main(capsys, "--resume", str(run))
    finally:
        _writable_again(run)
    assert rc == 2 and "Traceback" not in err
    assert f"error: cannot write {run}" in err and "chmod -R u+w" in err
    assert _snapshot(run) == before


@pytest.mark.parametrize("where", ["checkpoint", "metrics", "first file"])
def test_full_disk_is_a_clean_error_and_the_run_resumes(tmp_path, monkeypatch, capsys, reference, where):
    """ENOSPC (simulated: the write raises it) names the file and the fix, keeps every finished epoch, leaves no
    temp file and no torn row; once there is room again the run resumes to an uninterrupted run's metrics."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    m = pytest.MonkeyPatch()  # undone before the resume (the figure stubs stay)
    calls = {"n": 0}
    if where == "checkpoint":
        real_save = torch.save

        def save(obj, f, *a, **k):
            if Path(f).parent.name == "mlp" and Path(f).name.startswith(".last.pt."):  # mlp's first last.pt
                Path(f).write_bytes(b"PK\x03\x04 partial")
                raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file")
            return real_save(obj, f, *a, **k)

        m.setattr(torch, "save", save)
        m.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    elif where == "metrics":
        real_open = open

        def open_(path, mode="r", *a, **k):
            f = real_open(path, mode, *a, **k)
            if Path(path).name == "metrics.jsonl" and "a" in mode:
                calls["n"] += 1
                if calls["n"] == 5:
                    return _FullAfter(f, 17)
            return f

        m.setattr(runs, "open", open_, raising=False)
    else:

        def fsync(fd):
            raise full

        m.setattr(runs.os, "fsync", fsync)
    root = tmp_path / "runs"
    try:
        rc, err = _cli_main(capsys, *CLI_SETTINGS, "--runs-dir", str(root))
    finally:
        m.undo()
    assert rc == 2 and "Traceback" not in err
    assert "No space left on device" in err and "fix: free some space there" in err
    if where == "first file":
        assert "config.json" in err and "run the same command again" in err
        assert not list(root.rglob("*.json"))  # the half-made folder is gone
        return
    (experiment,) = root.iterdir()
    (run,) = experiment.iterdir()
    named = run / "checkpoints" / "mlp" / "last.pt" if where == "checkpoint" else run / "metrics.jsonl"
    assert f"cannot write {named}" in err and f"--resume {run}" in err
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    rc, err = _cli_main(capsys, "--resume", str(run))
    assert rc == 0, err
    assert _rows(run) == _rows(reference)
    _assert_consistent(run)


class _FullAfter(io.TextIOBase):
    """A file that takes `room` characters, then fails as a full disk does (the rest of the write is lost)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, s: str) -> int:
        self.f.write(s[: self.room])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the whole: killed 20 times at random moments ------------------------------------------------------------


@pytest.mark.slow
def test_twenty_sigkills_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL at 20 random moments of a run's life (resume, training, checkpoints, figures, report, summary), each
    followed by --resume until the run finishes (then a new run, until 20 kills): every finished run has no
    duplicated or torn row, no temp file, no lock, and the metrics of an uninterrupted run."""
    overrides = [o if o != "train.epochs=3" else "train.epochs=5" for o in OVERRIDES]
    reference = run_experiment(
        ladder, scale="smoke", overrides=overrides, device="cpu", runs_root=tmp_path / "ref", verbose=False
    )
    args = ["run", "ladder", "--scale", "smoke", "--device", "cpu", "--quiet"]
    for o in overrides:
        args += ["--set", o]
    log = tmp_path / "run.log"
    start = time.perf_counter()
    child = _Child([*args, "--runs-dir", str(tmp_path / "timed")], log)  # how long a whole run takes
    assert child.wait() == 0, child.output()
    span = min(max(time.perf_counter() - start, 0.1), 5.0)
    rng, kills, finished = random.Random(16), 0, list((tmp_path / "timed").glob("*/*"))
    while kills < 20:
        assert len(finished) < 40, f"{kills} kills in {len(finished)} runs: the runs end too soon to be killed"
        root, run = tmp_path / f"round{len(finished)}", None
        for _ in range(60):
            child = _Child([*args, "--runs-dir", str(root), *(["--resume", str(run)] if run else [])], log)
            if kills < 20:
                time.sleep(rng.uniform(0.0, span))
                if child.poll() is None:
                    child.kill()
                    kills += 1
            rc = child.wait()
            if run is None and (found := [p.parent for p in root.glob("*/*/config.json")]):
                (run,) = found
            for half_made in [p for p in root.glob("*/*") if p != run]:  # killed before it wrote config.json
                assert not (half_made / "config.json").exists()
                shutil.rmtree(half_made)
            if rc == 0:
                break
            assert rc == -signal.SIGKILL, child.output()
        else:
            raise AssertionError("the run never finished")
        assert run is not None and (run / "summary.json").exists(), child.output()
        finished.append(run)
    for run in finished:
        assert _rows(run) == _rows(reference)
        _assert_consistent(run)
        assert _numbers(run) == _numbers(reference)


def _numbers(run: Path) -> dict:
    """The summary's numbers per rung (what test_resume compares), not the timings."""
    keys = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "best_epoch")
    rungs = json.loads((run / "summary.json").read_text())["rungs"]
    return {r: {k: d[k] for k in keys} for r, d in rungs.items()}
