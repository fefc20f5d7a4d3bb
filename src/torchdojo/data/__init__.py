"""Datasets: registry, resolution (offline first), in-memory splits, batching and augmentation."""

from pathlib import Path

from torchdojo.data.base import (
    DatasetSpec,
    ImageData,
    Splits,
    find_dataset,
    random_subset,
    stratified_split,
    subset_classes,
)
from torchdojo.data.catalog import DATASETS

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageData",
    "Splits",
    "load_dataset",
    "random_subset",
    "stratified_split",
    "subset_classes",
]


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
    classes: list[str] | tuple[str, ...] | None = None,
) -> Splits:
    """Load a registered dataset into memory (offline first), optionally keeping only `classes`."""
    spec = DATASETS.get(name)
    folder = find_dataset(spec, data_dir, download) if spec.needs_files else Path(".")
    splits = spec.load(folder, verify)
    return subset_classes(splits, classes) if classes else splits
