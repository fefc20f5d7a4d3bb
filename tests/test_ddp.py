"""DDP: shards that make a global batch, and real 2-process torchrun runs of the ladder (gloo, loopback).

Tolerances of 2 processes vs 1 with the same global batch (digits, 2 epochs, batch 32 = 2 x 16):
- logreg (no batch norm, dropout or augmentation): the same maths, summed in another order: 1e-4.
- mlp (batch norm, dropout): batch norm sees 16 images per rank instead of 32 and dropout masks are drawn
  for 16 images, not 32, so the runs differ like two seeds do: 0.03 in accuracy.
- cnn (also crop+flip, 2 epochs of one-cycle): far from converged, seed-to-seed spread is large (~0.1);
  it must learn (test accuracy > 0.3, chance 0.1) and stay within 0.2.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torchdojo.data import ImageData
from torchdojo.data.loader import LoaderBatches, TensorBatches
from torchdojo.distributed import shard, shutdown
from torchdojo.experiments import ladder
from torchdojo.experiments.base import run_experiment

TORCHRUN = Path(sys.executable).with_name("torchrun")
SETTINGS = [
    "dataset=digits",
    "rungs=logreg,mlp,cnn",
    "train_subset=0",
    "train.max_batches=0",
    "train.epochs=2",
    "train.batch_size=32",
]


def _data(n: int) -> ImageData:
    x = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageData(x, torch.arange(n), [str(i) for i in range(n)])


@pytest.mark.parametrize("n,world,batch", [(40, 2, 8), (37, 2, 8), (50, 4, 12), (3, 4, 4)])
def test_rank_batches_together_are_the_one_process_batch(n, world, batch):
    one = [y.tolist() for _, y in TensorBatches(_data(n), batch, [0.0], [1.0], shuffle=True, seed=5).set_epoch(2)]
    ranks = [
        [
            y.tolist()
            for _, y in TensorBatches(
                _data(n), batch, [0.0], [1.0], shuffle=True, seed=5, rank=r, world_size=world
            ).set_epoch(2)
        ]
        for r in range(world)
    ]
    assert all(len(r) == len(ranks[0]) for r in ranks)  # equal steps on every rank
    assert len(ranks[0]) == len(one)
    for b, expected in enumerate(one):
        together = sorted(i for r in ranks for i in r[b])
        if b < len(one) - 1:
            assert together == sorted(expected)  # batch b over all ranks is batch b of one process
        else:  # the last one plus the padding that evens out the shards
            assert set(expected) <= set(together) and len(together) - len(expected) <= world - 1


def test_positions_mark_the_padding():
    pos = [shard(7, r, 3) for r in range(3)]
    assert [p.tolist() for p in pos] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert sorted(int(i) for p in pos for i in p if i < 7) == list(range(7))
    assert [p.tolist() for p in (shard(7, r, 3, drop_last=True) for r in range(3))] == [[0, 3], [1, 4], [2, 5]]


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_batches_shard_like_tensor_batches(shuffle):
    data = _data(23)
    dataset = torch.utils.data.TensorDataset(data.x.float(), data.y)
    for r in range(2):
        loader = LoaderBatches(dataset, 6, shuffle=shuffle, seed=1, rank=r, world_size=2, device="cpu")
        tensor = TensorBatches(data, 6, [0.0], [1.0], shuffle=shuffle, seed=1, rank=r, world_size=2)
        assert not loader.loader.pin_memory  # pinned only for a CUDA device
        order = torch.randperm(23, generator=torch.Generator().manual_seed(1 + 3)) if shuffle else torch.arange(23)
        got = [i for _, y in loader.set_epoch(3) for i in y.tolist()]
        assert got == order[loader.positions() % 23].tolist()  # DistributedSampler's split, padding wrapped
        assert len(loader) == len(tensor) and loader.positions().tolist() == tensor.positions().tolist()


# --- real processes ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(runs: Path, *extra: str) -> subprocess.Popen:
    """`torchrun --nproc_per_node=2 -m torchdojo run ladder ...` on loopback, in its own process group."""
    cmd = [
        str(TORCHRUN),
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        "-m",
        "torchdojo",
        "run",
        "ladder",
        "--scale",
        "smoke",
        "--device",
        "cpu",
        "--runs-dir",
        str(runs),
        "--quiet",
        *extra,
    ]
    for s in SETTINGS:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return err


def _only_run(runs: Path) -> Path:
    (run,) = list((runs / "ladder").iterdir())
    return run


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("ddp")
    _finish(_torchrun(runs))
    return _only_run(runs)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(two_process_run: Path, tmp_path: Path) -> None:
    run = two_process_run
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    rows = _rows(run)
    assert [(r["stage"], r["epoch"]) for r in rows] == [(r, e) for r in ("logreg", "mlp", "cnn") for e in (1, 2)]
    state = torch.load(run / "checkpoints" / "cnn" / "best.pt", weights_only=True)["model"]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)  # plain keys: loads without DDP
    tables = [b for b in json.loads((run / "report.json").read_text())["blocks"] if b["type"] == "table"]
    splits = [dict(zip(t["columns"], r, strict=True)) for t in tables if "images" in t["columns"] for r in t["rows"]]
    test_images = {r["images"] for r in splits if r["split"] == "test"}
    assert test_images == {359}  # each test image counted once: the padding of the odd shard is dropped

    one = run_experiment(ladder, scale="smoke", overrides=SETTINGS, device="cpu", runs_root=tmp_path, verbose=False)
    ddp = json.loads((run / "summary.json").read_text())
    ref = json.loads((one / "summary.json").read_text())
    print(json.dumps({"2 processes": ddp["rungs"], "1 process": ref["rungs"]}))
    for key in ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc"):
        assert ddp["rungs"]["logreg"][key] == pytest.approx(ref["rungs"]["logreg"][key], abs=1e-4), key
        if key.endswith("acc"):
            assert abs(ddp["rungs"]["mlp"][key] - ref["rungs"]["mlp"][key]) < 0.03, key
            assert abs(ddp["rungs"]["cnn"][key] - ref["rungs"]["cnn"][key]) < 0.2, key
    assert ddp["rungs"]["cnn"]["test_acc"] > 0.3  # it learned: chance is 0.1


@pytest.mark.slow
def test_killed_ddp_run_resumes_and_finishes(two_process_run: Path, tmp_path: Path) -> None:
    victim = _torchrun(tmp_path / "killed")
    deadline, last = time.time() + 300, None
    while time.time() < deadline:  # kill the whole job once the CNN's first epoch is checkpointed
        last = next(iter((tmp_path / "killed").glob("ladder/*/checkpoints/cnn/last.pt")), None)
        if last is not None:
            break
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.005)
    assert last is not None, "the run never reached the CNN rung"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    run = _only_run(tmp_path / "killed")
    assert not (run / "summary.json").exists(), "the kill came too late: the run had finished"

    err = _finish(_torchrun(tmp_path / "unused", "--resume", str(run)))
    assert not (tmp_path / "unused").exists()  # a resumed run writes into its own folder only
    assert (run / "summary.json").exists() and (run / "report.html").exists(), err
    assert _rows(run) == _rows(two_process_run)  # deterministic on CPU: as if never interrupted


def _loader_worker(rank: int, port: int, out: str) -> None:
    """One of 2 spawned ranks: logreg on digits through LoaderBatches (the DataLoader path) under DDP."""
    torch.set_num_threads(1)  # 2 processes on 2 cores
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = _loader_fit()
        if rank == 0:
            torch.save(result, out)
    finally:
        # A barrier first (as torchdojo's own shutdown does): a rank that tears gloo down while its peer still
        # writes can abort in gloo's threads ("terminate called without an active exception").
        shutdown()


def _loader_fit() -> dict:
    from torchdojo.config import TrainConfig
    from torchdojo.data import load_dataset
    from torchdojo.engine import evaluate, fit
    from torchdojo.models import build_model

    digits = load_dataset("digits")
    train, test = ((d.x.float() / 16 - 0.5, d.y) for d in (digits.train, digits.test))
    torch.manual_seed(0)
    model = build_model("logreg", digits.train.shape, 10)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.01, channels_last=False)
    batches = LoaderBatches(torch.utils.data.TensorDataset(*train), 64, shuffle=True, seed=3)
    test_batches = LoaderBatches(torch.utils.data.TensorDataset(*test), 100)  # 359: one padded sample
    history = fit(model, batches, test_batches, cfg, device=torch.device("cpu"), verbose=False).history
    ev = evaluate(model, test_batches, device=torch.device("cpu"), return_outputs=True)
    return {"history": history, "eval": ev}


@pytest.mark.slow
def test_dataloader_path_under_ddp_matches_one_process(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(_loader_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    ddp, one = torch.load(out, weights_only=False), _loader_fit()
    for a, b in zip(ddp["history"], one["history"], strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    assert ddp["eval"]["n"] == one["eval"]["n"] == 359
    assert torch.equal(ddp["eval"]["targets"], one["eval"]["targets"])  # gathered back in the dataset's order
    torch.testing.assert_close(ddp["eval"]["probs"], one["eval"]["probs"], atol=1e-4, rtol=1e-4)
