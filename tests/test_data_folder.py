"""The DataLoader path: an image folder on disk, transforms v2, workers, reproducible per epoch."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchdojo.data.folder import FolderBatches
from torchdojo.errors import DojoError


def _make_folder(root: Path, classes=("cat", "dog"), per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_batches_shapes_labels_and_reproducible_epochs(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs")
    train = FolderBatches(root, 4, train=True, size=32, workers=0, seed=1)
    assert train.classes == ["cat", "dog"] and len(train) == 3
    xs = [x for x, _ in train.set_epoch(1)]
    assert xs[0].shape == (4, 3, 32, 32) and xs[0].dtype == torch.float32
    again = [x for x, _ in train.set_epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(xs, again, strict=True)), "same epoch, same batches"
    other = [x for x, _ in train.set_epoch(2)]
    assert not torch.equal(xs[0], other[0])
    test = FolderBatches(root, 100, train=False, size=32, workers=0)
    ((x, y),) = list(test)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == [0] * 5 + [1] * 5


def test_folder_batches_with_workers(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", per_class=3)
    ys = torch.cat([y for _, y in FolderBatches(root, 2, train=True, size=16, workers=2, seed=3)])
    assert sorted(ys.tolist()) == [0, 0, 0, 1, 1, 1]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DojoError, match="does not exist"):
        FolderBatches(tmp_path / "nope", 4, train=True)


def test_folder_batches_with_workers_are_reproducible_per_epoch(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", per_class=2)
    b = FolderBatches(root, 4, train=True, size=16, workers=2, seed=5)
    first = torch.cat([x for x, _ in b.set_epoch(3)])
    assert torch.equal(first, torch.cat([x for x, _ in b.set_epoch(3)]))
