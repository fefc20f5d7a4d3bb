"""Batching by index from tensors held on the training device: no DataLoader, no worker processes.

A `TensorBatches` is re-iterable per epoch; `epoch(e)` shuffles and augments with a generator
seeded from (seed, e), so epoch e is the same batches whether the run was resumed or not.
"""

from collections.abc import Iterator, Sequence

import torch

from torchdojo.data.augment import Aug, center_crop_resize
from torchdojo.data.base import ImageData


class TensorBatches:
    """Normalised float batches (B, C, H, W) from an in-memory uint8 `ImageData`."""

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
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ):
        self.data = data
        self.batch_size = batch_size
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, seed, drop_last
        self.crop, self.size, self.channels = crop, size, channels
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        dev = data.x.device
        self.mean = torch.tensor(mean, device=dev).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=dev).view(1, -1, 1, 1) * 255
        self._epoch = 0

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.data)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:  # each rank its own shard, same length on every rank
            per = n // self.world_size if self.drop_last else -(-n // self.world_size)
            idx = torch.cat([idx, idx[: per * self.world_size - n]]) if per * self.world_size > n else idx
            idx = idx[self.rank * per : (self.rank + 1) * per]
        return idx

    def num_samples(self) -> int:
        return len(self._indices(0))

    def __len__(self) -> int:
        n = self.num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> "TensorBatches":
        self._epoch = epoch
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        idx = self._indices(epoch).to(self.data.x.device)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7919)
        for i in range(len(self)):
            b = idx[i * self.batch_size : (i + 1) * self.batch_size]
            x, y = self.data.x[b], self.data.y[b]
            if self.augment is not None:
                x = self.augment(x, g)
            x = center_crop_resize(x, self.crop, self.size)
            x = (x.float() - self.mean) / self.std
            if self.channels is not None and x.shape[1] != self.channels:
                x = x.expand(-1, self.channels, -1, -1)  # grayscale -> RGB for RGB backbones
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
