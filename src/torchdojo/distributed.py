"""Multi-process training with PyTorch's DistributedDataParallel, launched by `torchrun`.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init_from_env` turns them into
a process group (gloo on CPU, NCCL on CUDA). Everything else here is a thin helper over `torch.distributed`
that is a no-op in a single process, so the same code runs with and without torchrun:

- `shard`: the strided split of an epoch's (padded) order that `DistributedSampler` uses;
- `all_reduce_sum`, `all_gather_cat`, `broadcast_object`, `broadcast_buffers`, `barrier`;
- `wrap`: DDP around an objective module, so any training `step(model, batch)` gets its gradients all-reduced.

Faults: the process group has a timeout (`timeout_seconds`: `--ddp-timeout`, else $TORCHDOJO_DDP_TIMEOUT, else
10 minutes). A collective that waits longer (a rank hung, was stopped or is stuck on a slow disk) or loses its
peer (a rank died) raises in the waiting rank; `PeerFault`, a DojoError, says which rank, which timeout, that
the checkpoints already written are kept, and how to resume. The helpers here raise it themselves; the
gradient all-reduce inside DDP's backward raises PyTorch's own error, which `faults_as_errors` (around the
whole run, in `torchdojo run`) turns into a PeerFault. With gloo (CPU) the timeout raises in the waiting rank;
with NCCL (CUDA) PyTorch's NCCL watchdog ends the process after the same timeout, with its own log.
"""

import contextlib
import dataclasses
import datetime
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from torchdojo.errors import DojoError

TIMEOUT_ENV = "TORCHDOJO_DDP_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0  # 10 minutes: far above any step of the course's runs, short enough not to look hung
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1.0, 7 * 24 * 3600.0
_timeout_override: float | None = None
_job: dict[str, Any] = {}  # rank, world size and timeout of the group init_from_env created

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: global rank, rank on its machine, number of processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    """True inside a process group (a torchrun job with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def env_info() -> DistInfo:
    """The rank layout torchrun put in the environment (1 process when not launched by torchrun)."""
    try:
        return DistInfo(
            int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        )
    except ValueError as e:
        raise DojoError(
            f"bad torchrun environment ({e})", "launch with torchrun --nproc_per_node=N -m torchdojo run ..."
        ) from None


def parse_timeout(value: Any, source: str = "--ddp-timeout") -> float:
    """`value` as a DDP timeout in seconds; a DojoError naming `source` if it is not a sensible one."""
    try:
        seconds = float(str(value).strip())
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and MIN_TIMEOUT_S <= seconds <= MAX_TIMEOUT_S):
        raise DojoError(
            f"{source} {value!r} is not a DDP timeout (seconds from {MIN_TIMEOUT_S:g} to {MAX_TIMEOUT_S:g})",
            f"give the seconds a rank may wait for the others, e.g. {source} {DEFAULT_TIMEOUT_S:g} (the default)",
        )
    return seconds


def set_timeout(seconds: float | None) -> None:
    """The process-group timeout for groups created from now on (`None`: $TORCHDOJO_DDP_TIMEOUT or default)."""
    global _timeout_override
    _timeout_override = None if seconds is None else parse_timeout(seconds)


def timeout_seconds() -> float:
    """How long a collective may wait: `set_timeout`'s value, else $TORCHDOJO_DDP_TIMEOUT, else 10 minutes."""
    if _timeout_override is not None:
        return _timeout_override
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    return parse_timeout(raw, TIMEOUT_ENV) if raw else DEFAULT_TIMEOUT_S


class PeerFault(DojoError):
    """A collective timed out or lost its peer: the other processes hung, were stopped or died."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        timeout: float,
        what: str,
        lost: bool = False,
        experiment: str | None = None,
        run_dir: str | Path | None = None,
    ):
        self.rank, self.world_size, self.timeout, self.what, self.lost = rank, world_size, timeout, what, lost
        self.experiment, self.run_dir = experiment, run_dir
        how = (
            "lost the connection to another process (it exited or crashed)"
            if lost
            else f"waited longer than the DDP timeout of {timeout:g} s for the other processes (one hung, "
            "was stopped or is far slower)"
        )
        finished, joining = what == "the last barrier", what == "joining the job"
        if finished:
            kept = "the run itself had finished and its folder is complete"
        elif joining:
            kept = "nothing was trained (a resumed run's checkpoints are untouched)"
        else:
            kept = "every checkpoint already written (last.pt: the last finished epoch) is kept"
            kept += f" in {run_dir}" if run_dir else ""
        problem = f"rank {rank} of {world_size}: {what} {how}; this process stops, {kept}"
        local = os.environ.get("LOCAL_WORLD_SIZE", str(world_size))
        resume = (
            f"torchrun --nproc_per_node={local} -m torchdojo run {experiment or 'EXPERIMENT'} "
            f"--resume {run_dir or 'RUN_DIR'}"
        )
        if joining:
            fix = "start every rank (the same --nnodes/--nproc_per_node everywhere, MASTER_ADDR reachable)"
        elif finished:
            fix = "see the other ranks' output for the cause"
        else:
            fix = f"see the other ranks' output for the cause, then resume (same torchrun options): {resume}"
        fix += (
            "; if a step legitimately takes longer (a first download, a slow disk), raise the wait with "
            f"--ddp-timeout SECONDS or {TIMEOUT_ENV}=SECONDS"
        )
        super().__init__(problem, fix)

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (multiprocessing) with its fields, not its message
        return PeerFault, (
            self.rank,
            self.world_size,
            self.timeout,
            self.what,
            self.lost,
            self.experiment,
            self.run_dir,
        )

    def for_run(self, experiment: str, run_dir: str | Path | None) -> "PeerFault":
        """The same fault, its resume command naming the experiment and run folder."""
        return PeerFault(self.rank, self.world_size, self.timeout, self.what, self.lost, experiment, run_dir)


# What PyTorch's errors say when a collective or the store gives up (gloo, NCCL, TCPStore).
_LOST = ("connection reset", "connection closed", "closed by peer", "broken pipe", "connection refused")
_TIMED_OUT = ("timed out", "timeout", "time out")
_DIST = ("gloo", "nccl", "c10d", "processgroup", "store", "socket", "collective", "distributed", "pair closure")


def fault_from(exc: BaseException, what: str = "a collective operation", collective: bool = False) -> PeerFault | None:
    """`exc` (or an exception in its chain) as a PeerFault if it is a distributed timeout or a lost peer.

    `collective`: `exc` came out of a torch.distributed call, so any timeout or lost connection is one.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, PeerFault):
            return e
        if isinstance(e, RuntimeError):  # DistError (DistBackendError, DistStoreError, ...) is one
            text = str(e).lower()
            lost = any(m in text for m in _LOST)
            timed_out = any(m in text for m in _TIMED_OUT)
            in_job = bool(_job) or is_initialized()  # outside DDP, "timed out" is someone else's error
            ours = collective or isinstance(e, dist.DistError) or (in_job and any(m in text for m in _DIST))
            if ours and (lost or timed_out):
                return PeerFault(
                    _job.get("rank", rank()),
                    _job.get("world_size", world_size()),
                    _job.get("timeout", timeout_seconds()),
                    what,
                    lost=lost and not timed_out,
                )
        e = e.__cause__ or e.__context__
    return None


def _guarded(what: str) -> Callable[[F], F]:
    """Turn a distributed timeout or lost peer inside the helper into a PeerFault naming `what`."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except PeerFault:
                raise
            except RuntimeError as e:
                fault = fault_from(e, what, collective=True)
                if fault is None:
                    raise
                raise fault from e

        return inner  # type: ignore[return-value]

    return decorate


def _created_since(runs_dir: Path, experiment: str, since: float) -> Path | None:
    """The one run folder of `experiment` under `runs_dir` whose config.json was written after `since`."""
    try:
        found = [p.parent for p in (runs_dir / experiment).glob("*/config.json") if p.stat().st_mtime >= since]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


@contextlib.contextmanager
def faults_as_errors(
    experiment: str, runs_dir: str | Path = "runs", resume: str | Path | None = None
) -> Iterator[None]:
    """Around a whole run: a distributed timeout or lost peer leaves as a PeerFault naming the run folder.

    Without it, a timeout in DDP's backward (the gradient all-reduce) is PyTorch's RuntimeError, whose
    message is a C++ source location. The folder is `resume`, else the one folder of `experiment` under
    `runs_dir` that this run created (rank 0 names it; elsewhere `RUN_DIR` stands for it).
    """
    started = time.time() - 1.0
    try:
        yield
    except RuntimeError as e:  # PeerFault is a DojoError, not a RuntimeError: handled below
        fault = fault_from(e)
        if fault is None:
            raise
        run_dir = resume or _created_since(Path(runs_dir), experiment, started)
        raise fault.for_run(experiment, run_dir) from e
    except PeerFault as e:
        run_dir = resume or _created_since(Path(runs_dir), experiment, started)
        raise e.for_run(experiment, run_dir) from e


def init_from_env(device: torch.device) -> tuple[torch.device, bool]:
    """Join the torchrun job, if any: returns this rank's device and whether a group was created here.

    On CUDA each process takes GPU `LOCAL_RANK`; the backend is NCCL there and gloo on CPU. The group's
    timeout is `timeout_seconds()`: joining and every collective wait at most that long for the others.
    """
    info = env_info()
    if info.world_size <= 1 or is_initialized():
        return device, False
    if not dist.is_available():
        raise DojoError(
            "torchrun started several processes but this PyTorch has no torch.distributed",
            "install a PyTorch build with distributed support, or run one process",
        )
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise DojoError(
                f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs here",
                "pass --nproc_per_node at most the number of GPUs on each machine",
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    seconds = timeout_seconds()
    _job.update(rank=info.rank, world_size=info.world_size, timeout=seconds)
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(seconds=seconds),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    except RuntimeError as e:
        fault = fault_from(e, "joining the job", collective=True)
        if fault is None:
            raise
        raise fault from e
    return device, True


def shutdown() -> None:
    """Leave the process group (after a last barrier, so no rank exits while another still talks).

    The barrier waits at most the group's timeout; the group is left even when it times out.
    """
    if not is_initialized():
        return
    try:
        _guarded("the last barrier")(dist.barrier)()
    finally:
        with contextlib.suppress(RuntimeError):  # a broken group may refuse a clean teardown: we leave anyway
            dist.destroy_process_group()


@_guarded("a barrier")
def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shard(n: int, rank: int, world_size: int, drop_last: bool = False) -> torch.Tensor:
    """Positions in an epoch's order (0..n-1) that `rank` takes: every world_size-th, starting at rank.

    Without `drop_last` the order is padded by wrapping round to a multiple of world_size, so every rank
    has the same number of samples (DDP needs equal steps); padded positions are >= n. This is
    `torch.utils.data.DistributedSampler`'s split, so global batch b of a DDP run holds the same samples
    as batch b of a one-process run with the same global batch size.
    """
    per = n // world_size if drop_last else -(-n // world_size)
    return torch.arange(rank, per * world_size, world_size)


@_guarded("an all-reduce")
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (a copy; `t` itself is returned in a single process)."""
    if not is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank (e.g. a diverged loss): every rank then takes the same branch."""
    if not is_initialized():
        return flag
    return bool(all_reduce_sum(torch.tensor(int(flag), device=device)).item())


@_guarded("an all-gather")
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `t` along dim 0 in rank order; shards may differ in length."""
    if not is_initialized():
        return t
    n = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


@_guarded("a broadcast")
def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (e.g. the run folder's name, which rank 0 picks)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@_guarded("a broadcast of the batch-norm statistics")
@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (batch-norm running statistics) to every rank.

    DDP syncs buffers at the start of each forward, then each rank updates them with its own shard;
    after an epoch they differ slightly. This makes every rank evaluate and save the same model.
    """
    if not is_initialized():
        return
    for b in module.buffers():
        dist.broadcast(b, src=src)


class Objective(nn.Module):
    """A training `step(model, batch)` as a module, so DDP can wrap the whole objective, not just `model(x)`.

    DDP only all-reduces gradients of a backward that follows its own forward; custom objectives call
    `model.features(...)` and other methods, which would bypass a DDP-wrapped model. The forward returns the
    StepOutput's fields as a tuple (DDP looks for tensors in tuples and dicts).
    """

    def __init__(self, model: nn.Module, step: Callable[..., Any]):
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, batch: Any) -> tuple[Any, ...]:
        out = self.step(self.model, batch)
        return out.loss, out.count, out.metrics, out.outputs, out.targets


def wrap(objective: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """`objective` inside DistributedDataParallel when in a process group; unchanged otherwise."""
    if not is_initialized():
        return objective
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(
        objective,
        device_ids=ids,
        output_device=device.index if ids else None,
        find_unused_parameters=find_unused_parameters,
    )


def shard_positions(batches: Any) -> tuple[torch.Tensor, int] | None:
    """Under DDP: where this rank's samples sit in the epoch (padding: >= total), if `batches` tells."""
    if not is_initialized() or not hasattr(batches, "positions"):
        return None
    return batches.positions(), int(batches.num_global)


def gather_outputs(out: dict[str, Any], where: list[torch.Tensor] | None, device: torch.device) -> dict[str, Any]:
    """All ranks' probabilities and targets; sorted back into the epoch's order when positions are known."""
    k = out["probs"].shape[1] if out["probs"].ndim == 2 else 0
    k = int(all_gather_cat(torch.tensor([k], device=device)).max().item())  # a rank may have none
    probs = all_gather_cat(out["probs"].reshape(-1, k).to(device)).cpu()
    targets = all_gather_cat(out["targets"].to(device)).cpu()
    if where is not None:
        pos = torch.cat(where) if where else torch.empty(0, dtype=torch.long)
        order = all_gather_cat(pos.to(device)).cpu().argsort()
        probs, targets = probs[order], targets[order]
    return {**out, "probs": probs, "targets": targets}
