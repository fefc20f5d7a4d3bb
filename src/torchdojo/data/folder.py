"""The DataLoader path, for image data that does not fit in memory: a folder of class sub-folders.

Decoding and per-sample transforms (torchvision transforms v2) run in DataLoader worker processes;
batches come out in the same (x, y) form as `TensorBatches`, so the engine does not care which path
fed it. `set_epoch(e)` reseeds shuffling and augmentation, so epoch e is reproducible and resumable.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from torchdojo.errors import DojoError


def folder_transforms(train: bool, size: int, mean: Sequence[float], std: Sequence[float]) -> object:
    """Train: random resized crop + flip; test: resize to size/0.875, then center crop (the ImageNet recipe)."""
    from torchvision.transforms import v2

    if train:
        geo = [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:
        geo = [v2.Resize(int(round(size / 0.875)), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.ToImage(), v2.RGB(), *geo, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class FolderBatches:
    """Batches from `root/<class>/<image>` through a DataLoader with workers and pinned memory."""

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        *,
        train: bool,
        size: int = 224,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        workers: int = 2,
        seed: int = 0,
        pin_memory: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        from torchvision.datasets import ImageFolder

        root = Path(root)
        if not root.is_dir():
            raise DojoError(f"image folder {root} does not exist", "pass a folder with one sub-folder per class")
        try:
            self.dataset = ImageFolder(str(root), transform=folder_transforms(train, size, mean, std))
        except (FileNotFoundError, RuntimeError) as e:
            raise DojoError(f"{root} is not an image folder: {e}", "lay it out as root/<class>/<image>.jpg") from None
        self.classes: list[str] = list(self.dataset.classes)
        self.batch_size, self.train, self.workers, self.seed = batch_size, train, workers, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.rank, self.world_size = rank, world_size
        self._epoch = 0

    def set_epoch(self, epoch: int) -> "FolderBatches":
        self._epoch = epoch
        return self

    def _loader(self) -> torch.utils.data.DataLoader:
        from torch.utils.data import DataLoader, DistributedSampler

        g = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch)
        sampler = None
        if self.world_size > 1:  # each rank its own shard
            sampler = DistributedSampler(self.dataset, self.world_size, self.rank, shuffle=self.train, seed=self.seed)
            sampler.set_epoch(self._epoch)
        return DataLoader(self.dataset, self.batch_size, shuffle=self.train and sampler is None, sampler=sampler,
                          num_workers=self.workers, pin_memory=self.pin_memory, generator=g,
                          drop_last=False, persistent_workers=False)

    def __len__(self) -> int:
        n = -(-len(self.dataset) // self.world_size)
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.workers > 0:  # each worker's RNG is seeded from the loader's per-epoch generator
            yield from self._loader()
            return
        # In-process transforms draw from the global RNG: give them their own per-epoch stream instead,
        # so the epoch is reproducible and the training RNG (dropout) is left untouched.
        state = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch + 7919).get_state()
        it = iter(self._loader())
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                batch = next(it, None)
                state = torch.get_rng_state()
            if batch is None:
                return
            yield batch
