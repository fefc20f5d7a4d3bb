"""The DataLoader path, for image data that does not fit in memory: a folder of class sub-folders.

Decoding and per-sample transforms (torchvision transforms v2) run in DataLoader worker processes;
batches come out in the same (x, y) form as `TensorBatches`, so the engine does not care which path
fed it. `set_epoch(e)` reseeds shuffling and augmentation, so epoch e is reproducible and resumable.
"""

import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils.data

from torchdojo.errors import DojoError


def folder_transforms(train: bool, size: int, mean: Sequence[float], std: Sequence[float]) -> object:
    """Train: random resized crop + flip; test: resize to size/0.875, then center crop (the ImageNet recipe)."""
    from torchvision.transforms import v2

    if train:
        geo = [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:
        geo = [v2.Resize(int(round(size / 0.875)), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.ToImage(), v2.RGB(), *geo, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class SkippedImageWarning(UserWarning):
    """An image of an image folder was left out because it is empty, no image, too large or damaged."""


def _skip(path: str, problem: str) -> None:
    warnings.warn(f"skipped {path}: {problem}", SkippedImageWarning, stacklevel=3)


class CheckedImageFolder(torch.utils.data.Dataset):
    """torchvision's `ImageFolder` layout, safe against bad files.

    Building it reads every file's header: a zero-byte file, bytes that are no image and a header over the
    decompression-bomb limit (`torchdojo.data.imagefile.pixel_limit`) are left out, each with a
    `SkippedImageWarning` naming the file and the problem. A file whose header is fine but whose data does not
    decode (truncated, damaged) is found when a worker reads it: it is replaced by the next good image of the
    folder, with the same warning, so batch shapes and counts stay as planned. A class with no readable image
    left is a DojoError naming the skipped files. Files without an image extension are ignored, as
    torchvision does.
    """

    def __init__(self, root: Path, transform: Callable[[Any], Any] | None = None):
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

        from torchdojo.data.imagefile import image_size

        skipped: list[tuple[str, str]] = []

        def readable(path: str) -> bool:
            if not has_file_allowed_extension(path, IMG_EXTENSIONS):
                return False
            try:
                image_size(path)
            except DojoError as e:
                skipped.append((path, e.problem))
                return False
            return True

        try:
            folder = ImageFolder(str(root), is_valid_file=readable)
        except (OSError, RuntimeError) as e:  # no class folders, a class without images, a folder unreadable
            bad = "; ".join(f"{p}: {why}" for p, why in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            if skipped:
                raise DojoError(
                    f"{root}: no readable image left in a class folder ({e}); skipped {len(skipped)} bad "
                    f"file(s): {bad}",
                    "replace or delete the bad files",
                ) from None
            raise DojoError(f"{root} is not an image folder: {e}", "lay it out as root/<class>/<image>.jpg") from None
        for path, problem in skipped:
            _skip(path, problem)
        self.root = root
        self.classes: list[str] = list(folder.classes)
        self.samples: list[tuple[str, int]] = list(folder.samples)
        self.skipped = skipped  # (path, problem) of every file left out
        self.transform = transform
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from torchdojo.data.imagefile import load_rgb

        n = len(self.samples)
        for k in range(n):
            path, target = self.samples[(index + k) % n]
            try:
                img = load_rgb(path)
            except DojoError as e:
                if path not in self._warned:  # once per file and process (each DataLoader worker has its own set)
                    self._warned.add(path)
                    _skip(path, f"{e.problem}; the next image of the folder is used in its place")
                continue
            return (self.transform(img) if self.transform is not None else img), target
        raise DojoError(f"no image of {self.root} can be decoded", "replace or delete the damaged files")


class FolderBatches:
    """Batches from `root/<class>/<image>`: a `CheckedImageFolder` (torchvision's ImageFolder layout, bad
    files skipped with a warning naming each) fed through `LoaderBatches` (DataLoader workers, DDP sharding,
    pinned memory on CUDA)."""

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
        from torchdojo.data.loader import LoaderBatches

        root = Path(root)
        if not root.is_dir():
            raise DojoError(f"image folder {root} does not exist", "pass a folder with one sub-folder per class")
        self.dataset = CheckedImageFolder(root, transform=folder_transforms(train, size, mean, std))
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
