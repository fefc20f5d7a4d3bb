"""DDP under faults: a process-group timeout ends a job whose rank hung, was stopped or died, with a clear error.

Without a timeout of its own the group got PyTorch's default (30 minutes for gloo); a SIGSTOPped rank left the
others waiting that long and then a C++ error with a traceback. Now `--ddp-timeout` / $TORCHDOJO_DDP_TIMEOUT
(default 10 minutes) bounds every wait - joining, collectives, DDP's gradient all-reduce, the barriers - and the
waiting rank stops with a PeerFault (a DojoError) naming itself, the timeout, the checkpoints kept and the
resume command. Real processes: gloo on loopback, 1 thread each (2 shared cores).
"""

import datetime
import json
import multiprocessing
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torchdojo import distributed
from torchdojo.cli import main
from torchdojo.errors import DojoError
from torchdojo.runs import load_checkpoint

TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = "TORCHDOJO_DDP_TIMEOUT"
TIMEOUT = 6  # seconds: the torchrun job's timeout
SETTINGS = [
    "dataset=digits",
    "rungs=mlp",
    "train_subset=0",
    "train.max_batches=0",
    "train.epochs=400",  # far more than the test waits for: the run is mid-way when a rank is stopped
    "train.batch_size=32",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_timeout_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENV, raising=False)
    yield
    if hasattr(distributed, "set_timeout"):  # (the real-process tests also run against the old code)
        distributed.set_timeout(None)


# --- the setting --------------------------------------------------------------------------------------------


def test_timeout_default_env_and_option(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.timeout_seconds() == distributed.DEFAULT_TIMEOUT_S == 600
    monkeypatch.setenv(distributed.TIMEOUT_ENV, " 45 ")
    assert distributed.timeout_seconds() == 45
    distributed.set_timeout(7.5)  # --ddp-timeout wins over the environment
    assert distributed.timeout_seconds() == 7.5
    distributed.set_timeout(None)
    assert distributed.timeout_seconds() == 45


@pytest.mark.parametrize("bad", ["0", "-5", "0.5", "nan", "inf", "1e12", "ten", "5s"])
def test_bad_timeouts_are_refused(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DojoError, match="not a DDP timeout") as e:
        distributed.parse_timeout(bad)
    assert "--ddp-timeout" in e.value.fix
    monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
    with pytest.raises(DojoError, match=distributed.TIMEOUT_ENV):
        distributed.timeout_seconds()


@pytest.mark.parametrize("how", ["option", "env"])
def test_bad_timeout_is_a_clean_cli_error_before_anything_runs(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    argv = ["run", "ladder", "--scale", "smoke", "--device", "cpu", "--runs-dir", str(tmp_path)]
    if how == "option":
        argv += ["--ddp-timeout", "0"]
    else:
        monkeypatch.setenv(distributed.TIMEOUT_ENV, "-1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not a DDP timeout" in err and "fix:" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_ddp_timeout_option_sets_the_timeout_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchdojo.experiments import base

    seen = []
    monkeypatch.setattr(base, "run_experiment", lambda *a, **k: seen.append(distributed.timeout_seconds()) or tmp_path)
    monkeypatch.setenv(ENV, "30")
    monkeypatch.setenv("TORCHDOJO_MALLOPT", "0")  # the CLI's process-wide allocator tuning: not in the test process
    assert main(["run", "ladder", "--ddp-timeout", "12.5", "--runs-dir", str(tmp_path)]) == 0
    assert main(["run", "ladder", "--runs-dir", str(tmp_path)]) == 0
    assert seen == [12.5, 30]  # the option wins over the environment, and does not stick


def test_the_process_group_gets_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: seen.update(k))
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "9")
    assert distributed.init_from_env(torch.device("cpu")) == (torch.device("cpu"), True)
    assert seen["timeout"] == datetime.timedelta(seconds=9)
    monkeypatch.delenv(distributed.TIMEOUT_ENV)
    distributed.init_from_env(torch.device("cpu"))
    assert seen["timeout"] == datetime.timedelta(minutes=10)  # the default: a hung rank never waits forever


def test_pytorch_faults_become_peer_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "_job", {"rank": 1, "world_size": 2, "timeout": 6.0})
    timed_out = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 6000ms for recv operation"
    )
    fault = distributed.fault_from(timed_out)
    assert isinstance(fault, DojoError) and not fault.lost
    text = str(fault.for_run("ladder", "runs/ladder/x"))
    assert str(pickle.loads(pickle.dumps(fault.for_run("ladder", "runs/ladder/x")))) == text
    assert text.startswith("rank 1 of 2:") and "DDP timeout of 6 s" in text and "last.pt" in text
    assert "torchrun --nproc_per_node=2 -m torchdojo run ladder --resume runs/ladder/x" in text
    lost = distributed.fault_from(RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection closed by peer [::1]:1"))
    assert lost is not None and lost.lost and "lost the connection" in lost.problem
    wrapped = ValueError("while tearing down")  # the fault may sit in the chain of a later error
    wrapped.__context__ = timed_out
    assert distributed.fault_from(wrapped) is not None
    assert distributed.fault_from(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    monkeypatch.setattr(distributed, "_job", {})  # outside a job, another library's timeout is not ours
    assert distributed.fault_from(RuntimeError("DataLoader worker (pid 5) timed out: socket")) is None


def test_faults_as_errors_names_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "_job", {"rank": 0, "world_size": 2, "timeout": 6.0})
    old = tmp_path / "ladder" / "old"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    os.utime(old / "config.json", (time.time() - 3600,) * 2)  # another, older run: not this one
    with pytest.raises(DojoError) as e, distributed.faults_as_errors("ladder", tmp_path):
        (tmp_path / "ladder" / "new").mkdir()
        (tmp_path / "ladder" / "new" / "config.json").write_text("{}")
        raise torch.distributed.DistBackendError("Timed out waiting 6000ms for send operation to complete")
    assert f"--resume {tmp_path / 'ladder' / 'new'}" in e.value.fix
    with pytest.raises(ZeroDivisionError), distributed.faults_as_errors("ladder", tmp_path):
        raise ZeroDivisionError  # anything else passes through unchanged


# --- real processes ---------------------------------------------------------------------------------------


def _rank_main(rank: int, world: int, port: int, timeout: float, out: str, hang: bool) -> None:
    """One rank joined through `init_from_env`, as torchrun would start it; rank 1 hangs if `hang`."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
        **{ENV: str(timeout)},
    )
    torch.set_num_threads(1)
    result: dict = {}
    t0 = time.monotonic()
    try:
        distributed.init_from_env(torch.device("cpu"))
    except DojoError as e:
        result["join"] = [str(e), time.monotonic() - t0]
    else:
        if rank == 1 and hang:
            time.sleep(4 * timeout)  # hung: never reaches the barrier (the test kills it)
            os._exit(0)
        for name, call in (("barrier", distributed.barrier), ("shutdown", distributed.shutdown)):
            t0 = time.monotonic()
            try:
                call()
            except DojoError as e:
                result[name] = [str(e), time.monotonic() - t0]
        result["left_group"] = not distributed.is_initialized()
    Path(out).write_text(json.dumps(result))


def _ranks(tmp_path: Path, world: int, started: int, timeout: float, hang: bool) -> dict:
    """Start `started` of `world` ranks; rank 0's result once it ends (the others are killed)."""
    ctx, port, out = multiprocessing.get_context("spawn"), _free_port(), tmp_path / "rank0.json"
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, timeout, str(out), hang)) for r in range(started)]
    for p in procs:
        p.start()
    try:
        procs[0].join(3 * timeout + 20)  # on the old code rank 0 still waits here (30 minutes of gloo default)
        assert not procs[0].is_alive(), "rank 0 still waits for the hung rank"
        assert out.exists(), "rank 0 ended without a DojoError"
        return json.loads(out.read_text())
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()


@pytest.mark.slow
def test_a_hung_rank_ends_the_barriers_within_the_timeout(tmp_path: Path) -> None:
    result = _ranks(tmp_path, world=2, started=2, timeout=2, hang=True)
    for name, what in (("barrier", "a barrier"), ("shutdown", "the last barrier")):
        message, waited = result[name]
        assert message.startswith(f"rank 0 of 2: {what} waited longer than the DDP timeout of 2 s"), message
        assert waited < 2 + 10, waited
    assert "--resume" in result["barrier"][0]
    assert "the run itself had finished" in result["shutdown"][0]  # after the run: nothing to resume
    assert result["left_group"]  # shutdown left the group although its barrier failed


@pytest.mark.slow
def test_a_rank_that_never_comes_ends_the_join_within_the_timeout(tmp_path: Path) -> None:
    message, waited = _ranks(tmp_path, world=2, started=1, timeout=2, hang=False)["join"]
    assert message.startswith("rank 0 of 2: joining the job waited longer than the DDP timeout of 2 s"), message
    assert waited < 2 + 10


def _children(pid: int) -> dict[int, int]:
    """RANK -> pid of the worker processes torchrun `pid` started."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in env:
            ranks[int(env["RANK"])] = int(proc.name)
    return ranks


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_stopped_rank_ends_the_torchrun_job_with_the_checkpoint_kept(tmp_path: Path) -> None:
    runs, log = tmp_path / "runs", tmp_path / "stderr.txt"
    cmd = [str(TORCHRUN), "--nproc_per_node=2", "--nnodes=1", "--master-addr=127.0.0.1"]
    cmd += [f"--master-port={_free_port()}", "-m", "torchdojo", "run", "ladder", "--scale", "smoke"]
    cmd += ["--device", "cpu", "--runs-dir", str(runs), "--quiet"]
    for s in SETTINGS:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", ENV: str(TIMEOUT)}
    with log.open("w") as err:
        job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    ranks: dict[int, int] = {}
    try:
        deadline, last = time.time() + 120, None
        while time.time() < deadline and last is None:  # stop rank 1 once the first epoch is checkpointed
            assert job.poll() is None, log.read_text()[-3000:]
            last = next(iter(runs.glob("ladder/*/checkpoints/mlp/last.pt")), None)
            time.sleep(0.01)
        assert last is not None, "the run never wrote a checkpoint"
        ranks = _children(job.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGSTOP)
        stopped = time.monotonic()
        while _alive(ranks[0]) and time.monotonic() - stopped < TIMEOUT + 30:
            time.sleep(0.05)
        waited = time.monotonic() - stopped
        assert not _alive(ranks[0]), "rank 0 still waits for the stopped rank"
        assert waited < TIMEOUT + 30, waited
        os.kill(ranks[1], signal.SIGCONT)  # torchrun's SIGTERM to it was pending: it ends now, and the job
        assert job.wait(timeout=30) != 0
    finally:
        for pid in ranks.values():  # nothing left behind, stopped or not
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    text = log.read_text()
    run = last.parent.parent.parent
    print(f"rank 0 ended {waited:.1f} s after rank 1 was stopped; its error:")
    print("\n".join(line for line in text.splitlines() if line.startswith(("error:", "  fix:"))))
    assert re.search(rf"error: rank 0 of 2: .* waited longer than the DDP timeout of {TIMEOUT} s", text), text[-3000:]
    assert "last.pt" in text and f"--resume {run}" in text, text[-3000:]
    assert not re.search(r'File ".*torchdojo', text)  # no traceback through torchdojo (torchrun prints its own)
    ckpt = load_checkpoint(last)  # written atomically by rank 0: whole
    assert ckpt["epoch"] >= 1 and set(ckpt["model"]) and not (run / "summary.json").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows][: ckpt["epoch"]] == list(range(1, ckpt["epoch"] + 1))
