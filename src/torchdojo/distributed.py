"""Multi-process training with PyTorch's DistributedDataParallel, launched by `torchrun`.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init_from_env` turns them into
a process group (gloo on CPU, NCCL on CUDA). Everything else here is a thin helper over `torch.distributed`
that is a no-op in a single process, so the same code runs with and without torchrun:

- `shard`: the strided split of an epoch's (padded) order that `DistributedSampler` uses;
- `all_reduce_sum`, `all_gather_cat`, `broadcast_object`, `broadcast_buffers`, `barrier`;
- `wrap`: DDP around an objective module, so any training `step(model, batch)` gets its gradients all-reduced.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchdojo.errors import DojoError


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


def init_from_env(device: torch.device) -> tuple[torch.device, bool]:
    """Join the torchrun job, if any: returns this rank's device and whether a group was created here.

    On CUDA each process takes GPU `LOCAL_RANK`; the backend is NCCL there and gloo on CPU.
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
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=info.rank,
        world_size=info.world_size,
        **({"device_id": device} if device.type == "cuda" else {}),
    )
    return device, True


def shutdown() -> None:
    """Leave the process group (after a last barrier, so no rank exits while another still talks)."""
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (e.g. the run folder's name, which rank 0 picks)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


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
