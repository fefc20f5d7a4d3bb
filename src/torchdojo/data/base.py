"""Datasets held in memory as uint8 tensors, their registry entries, and where to find their files.

Resolution order for a dataset's files: `--data-dir`, `$TORCHDOJO_DATA`, the user cache
(`$XDG_CACHE_HOME/torchdojo` or `~/.cache/torchdojo`), system locations (Debian packages), and only
then a download, when the user allows it (`--download`).
"""

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from torchdojo.errors import ChecksumError, DataMissingError, DojoError


@dataclasses.dataclass
class ImageData:
    """One split in memory: images (N, C, H, W) uint8, labels (N,) int64, class names."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def take(self, idx: torch.Tensor) -> "ImageData":
        return ImageData(self.x[idx], self.y[idx], self.classes)

    def to(self, device: torch.device | str) -> "ImageData":
        return ImageData(self.x.to(device), self.y.to(device), self.classes)


@dataclasses.dataclass
class Splits:
    """A dataset's train and test splits, with the source they were read from."""

    name: str
    train: ImageData
    test: ImageData
    source: str

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        x = self.train.x[:20000].float().div_(255)
        return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: which files make it, how to read them and how to get them."""

    name: str
    folder: str  # sub-folder name under a data root
    files: tuple[str, ...]  # files that must all be present (any of "a|b" alternatives)
    load: Callable[[Path, bool], Splits]  # (folder, verify checksums) -> Splits
    how_to_get: str
    system_dirs: tuple[str, ...] = ()
    download: Callable[[Path], None] | None = None  # fetch into the given folder
    description: str = ""
    needs_files: bool = True

    def missing_in(self, folder: Path) -> list[str]:
        """The files (alternatives as "a|b") that `folder` lacks."""
        return [f for f in self.files if not any((folder / alt).exists() for alt in f.split("|"))]

    def present_in(self, folder: Path) -> bool:
        return not self.missing_in(folder)


def user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torchdojo"


def candidate_dirs(spec: DatasetSpec, data_dir: str | Path | None = None) -> list[Path]:
    """Every folder where `spec`'s files may be, in resolution order."""
    out: list[Path] = []
    if data_dir:
        out += [Path(data_dir) / spec.folder, Path(data_dir)]
    if os.environ.get("TORCHDOJO_DATA"):
        out.append(Path(os.environ["TORCHDOJO_DATA"]) / spec.folder)
    out.append(user_cache() / "data" / spec.folder)
    out += [Path(d) for d in spec.system_dirs]
    return out


def find_dataset(spec: DatasetSpec, data_dir: str | Path | None = None, download: bool = False) -> Path:
    """The first folder that holds `spec`'s files; downloads only when allowed, else a clear error.

    A folder that holds some of the files but not all is an error naming what is missing: it is never
    silently passed over for a copy elsewhere (a --data-dir with one file missing must not be replaced by the
    system copy), and nothing is downloaded over it."""
    looked = candidate_dirs(spec, data_dir)
    for folder in looked:
        missing = spec.missing_in(folder)
        if not missing:
            return folder
        if len(missing) < len(spec.files):
            lacks = ", ".join(m.replace("|", " or ") for m in missing)
            raise DataMissingError(
                f"dataset {spec.name!r} in {folder} is incomplete, it lacks {lacks} (a partial copy is not "
                "replaced by one found elsewhere)",
                f"put the missing file(s) into {folder} ({spec.how_to_get}), or move that folder's {spec.name} "
                "files away to use another copy",
            )
    if download and spec.download is not None:
        target = Path(data_dir) / spec.folder if data_dir else user_cache() / "data" / spec.folder
        try:
            spec.download(target)
        except Exception as e:
            raise DojoError(
                f"downloading {spec.name} into {target} failed: {type(e).__name__}: {e}",
                f"check the network, or get it by hand: {spec.how_to_get}",
            ) from None
        if spec.present_in(target):
            return target
    places = "\n".join(f"    {p}" for p in looked)
    dl = " or pass --download to fetch it" if spec.download is not None and not download else ""
    raise DataMissingError(
        f"dataset {spec.name!r} not found; looked for {', '.join(spec.files)} in:\n{places}",
        f"{spec.how_to_get}; put the files in one of those folders, point --data-dir or $TORCHDOJO_DATA at them{dl}",
    )


def file_hash(path: Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (datasets and weights are too big to read at once)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5(path: Path) -> str:
    return file_hash(path, "md5")


def verify_md5(path: Path, expected: str | Sequence[str], what: str = "") -> None:
    """Raise ChecksumError if `path`'s md5 is not (one of) `expected`."""
    allowed = [expected] if isinstance(expected, str) else list(expected)
    got = md5(path)
    if got not in allowed:
        raise ChecksumError(
            f"{path} has md5 {got}, expected {' or '.join(allowed)}{f' ({what})' if what else ''}: "
            "the file is corrupt, truncated or not the published one",
            f"delete {path} and fetch it again (--download), or pass --no-verify if it is a deliberate custom version",
        )


def subset_classes(splits: Splits, classes: Sequence[str | int]) -> Splits:
    """Keep only `classes` (names or indices), relabelled 0..k-1 in the order given."""
    idx = []
    for c in classes:
        if isinstance(c, str) and not c.isdigit():
            if c not in splits.classes:
                raise DojoError(f"class {c!r} is not in {splits.name}", f"its classes are: {', '.join(splits.classes)}")
            idx.append(splits.classes.index(c))
        else:
            i = int(c)
            if not 0 <= i < len(splits.classes):
                raise DojoError(f"class index {i} out of range for {splits.name} ({len(splits.classes)} classes)")
            idx.append(i)
    if len(set(idx)) != len(idx):
        raise DojoError(f"classes {list(classes)} repeat a class")
    names = [splits.classes[i] for i in idx]

    def pick(d: ImageData) -> ImageData:
        lut = torch.full((len(d.classes),), -1, dtype=torch.long)
        lut[torch.tensor(idx)] = torch.arange(len(idx))
        new = lut[d.y]
        keep = new >= 0
        return ImageData(d.x[keep], new[keep], names)

    return Splits(f"{splits.name}[{','.join(names)}]", pick(splits.train), pick(splits.test), splits.source)


def random_subset(items: Any, n: int, seed: int) -> Any:
    """`n` of `items` drawn without replacement (seeded), kept in their original order; all of them when `n`
    is 0 or at least their number. `items`: a tensor, an `ImageData` (anything with `.take`) or a list."""
    if not n or n >= len(items):
        return items
    idx = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(items, torch.Tensor):
        return items[idx]
    if hasattr(items, "take"):
        return items.take(idx)
    return [items[i] for i in idx.tolist()]


def stratified_split(y: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices into (train, val), keeping each class's share in both."""
    if not 0 <= val_fraction < 1:
        raise DojoError(f"val_fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_val = int(round(len(members) * val_fraction))
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    tr, va = torch.cat(train_idx), torch.cat(val_idx)
    return tr.sort().values, va.sort().values
