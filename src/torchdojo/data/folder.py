"""The DataLoader path, for image data that does not fit in memory: a folder of class sub-folders.

Decoding and per-sample transforms (torchvision transforms v2) run in DataLoader worker processes;
batches come out in the same (x, y) form as `TensorBatches`, so the engine does not care which path
fed it. `set_epoch(e)` reseeds shuffling and augmentation, so epoch e is reproducible and resumable.
"""

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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
    """Batches from `root/<class>/<image>`: torchvision's ImageFolder fed through `LoaderBatches`
    (DataLoader workers, DDP sharding, pinned memory on CUDA)."""

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
        device: torch.device | str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        from torchvision.datasets import ImageFolder

        from torchdojo.data.loader import LoaderBatches

        root = Path(root)
        if not root.is_dir():
            raise DojoError(f"image folder {root} does not exist", "pass a folder with one sub-folder per class")
        try:
            self.dataset = ImageFolder(str(root), transform=folder_transforms(train, size, mean, std))
        except (FileNotFoundError, RuntimeError) as e:
            raise DojoError(f"{root} is not an image folder: {e}", "lay it out as root/<class>/<image>.jpg") from None
        self.classes: list[str] = list(self.dataset.classes)
        self.seed = seed
        self.batches = LoaderBatches(
            self.dataset,
            batch_size,
            shuffle=train,
            seed=seed,
            num_workers=workers,
            device=device,
            rank=rank,
            world_size=world_size,
        )
        self._epoch = 0

    def set_epoch(self, epoch: int) -> "FolderBatches":
        self._epoch = epoch
        self.batches.set_epoch(epoch)
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Random transforms draw from the global RNG (in this process, or through the workers' base seed,
        # drawn when the iterator starts). Give them their own per-epoch stream: the epoch is reproducible
        # and resumable, and the training RNG (dropout) is left untouched.
        state = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch + 7919).get_state()

        def isolated(fn: Callable[[], Any]) -> Any:
            nonlocal state
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                out = fn()
                state = torch.get_rng_state()
            return out

        it = isolated(lambda: iter(self.batches))
        while (batch := isolated(lambda: next(it, None))) is not None:
            yield batch
