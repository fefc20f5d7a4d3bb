"""Batches for the engine: `TensorBatches` from tensors on the training device, `LoaderBatches` from a
DataLoader. Both split an epoch between the ranks of a torchrun job by themselves.

A `TensorBatches` is re-iterable per epoch; `epoch(e)` shuffles and augments with a generator
seeded from (seed, e), so epoch e is the same batches whether the run was resumed or not.

Under DDP `batch_size` is the global batch: each of the N ranks takes ceil(batch_size / N) images of
it, so `torchrun --nproc_per_node=N` trains with the same hyper-parameters as one process. Both classes
expose `positions()` (where each of this rank's samples sits in the epoch's order; >= `num_global` for
the padding that evens out the shards), which `evaluate` uses to count every image exactly once.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from torchdojo import distributed
from torchdojo.data.augment import Aug, center_crop_resize
from torchdojo.data.base import ImageData


def _layout(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit rank/world size, or those of the process group when there is one (torchrun)."""
    if rank is None and world_size is None:
        return distributed.rank(), distributed.world_size()
    return rank or 0, world_size or 1


class TensorBatches:
    """Normalised float batches (B, C, H, W) from an in-memory uint8 `ImageData`.

    The data stays uint8 wherever it lives (on the GPU: resident, 4x smaller than float); gathering a
    batch, augmenting it and normalising it all happen on that device.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        shuffle: bool = False,
        augment: Aug | None = None,
        seed: int = 0,
        drop_last: bool = False,
        crop: int | None = None,
        size: int | None = None,
        channels: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        channels_last: bool = False,
    ):
        self.data = data
        self.batch_size = batch_size  # global: over all ranks
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, seed, drop_last
        self.crop, self.size, self.channels = crop, size, channels
        self.rank, self.world_size = _layout(rank, world_size)
        self.local_batch_size = -(-batch_size // self.world_size)
        self.channels_last = channels_last
        dev = data.x.device
        self.mean = torch.tensor(mean, device=dev).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=dev).view(1, -1, 1, 1) * 255
        self._epoch = 0

    @property
    def num_global(self) -> int:
        """Images in one epoch over all ranks."""
        return len(self.data)

    def positions(self) -> torch.Tensor:
        """Where each sample of this rank's shard sits in the epoch's order (padding: >= num_global)."""
        return distributed.shard(len(self.data), self.rank, self.world_size, self.drop_last)

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.data)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:  # this rank's strided shard, padded by wrapping round
            idx = idx[self.positions() % max(n, 1)]
        return idx

    def num_samples(self) -> int:
        return len(self._indices(0))

    def __len__(self) -> int:
        n, b = self.num_samples(), self.local_batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> "TensorBatches":
        self._epoch = epoch
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, b = self._epoch, self.local_batch_size
        idx = self._indices(epoch).to(self.data.x.device)
        # Each rank its own augmentation draws (rank 0 keeps the single-process seed).
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7919 + 1_000_003 * self.rank)
        for i in range(len(self)):
            bi = idx[i * b : (i + 1) * b]
            x, y = self.data.x[bi], self.data.y[bi]
            if self.augment is not None:
                x = self.augment(x, g)
            x = center_crop_resize(x, self.crop, self.size)
            x = x.float().sub(self.mean).div_(self.std)  # the mean may broadcast 1 -> 3 channels
            if self.channels is not None and x.shape[1] != self.channels:
                x = x.expand(-1, self.channels, -1, -1)  # grayscale -> RGB for RGB backbones
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


class LoaderBatches:
    """Batches from a map-style `Dataset` through a `DataLoader`, for data that does not fit in memory.

    A `DistributedSampler` shards (and, with `shuffle`, shuffles by seed and epoch) on every rank, also
    in a single process, so an epoch's order depends on (seed, epoch) only and a resumed run repeats it.
    With a CUDA `device` batches come from pinned memory; the engine copies them with non_blocking=True.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
        device: torch.device | str | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        from torch.utils.data import DataLoader, DistributedSampler

        self.rank, self.world_size = _layout(rank, world_size)
        self.batch_size = batch_size  # global: over all ranks
        self.local_batch_size = -(-batch_size // self.world_size)
        self.dataset = dataset
        self.drop_last = drop_last
        self.sampler = DistributedSampler(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        pin = device is not None and torch.device(device).type == "cuda"
        self.loader = DataLoader(
            dataset,
            batch_size=self.local_batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin,
            drop_last=drop_last,
            persistent_workers=False,
            collate_fn=collate_fn,
        )
        # Fresh workers each epoch: their seeds come from the RNG when the epoch starts, so a resumed run
        # draws the same augmentations as an uninterrupted one (persistent workers would carry state over).

    @property
    def num_global(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def positions(self) -> torch.Tensor:
        return distributed.shard(self.num_global, self.rank, self.world_size, self.drop_last)

    def set_epoch(self, epoch: int) -> "LoaderBatches":
        self.sampler.set_epoch(epoch)
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)
