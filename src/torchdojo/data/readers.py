"""Readers for the datasets' published binary formats: MNIST idx, CIFAR-10 pickles, STL-10 binaries."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from torchdojo.errors import DojoError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def first_existing(folder: Path, name: str) -> Path:
    """`name` or `name.gz` in `folder`, whichever exists (raw files win)."""
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.exists():
            return cand
    raise FileNotFoundError(folder / name)


def corrupt_file(path: Path, why: str) -> DojoError:
    """The error for a dataset file that cannot be read: name it and say how to replace it."""
    return DojoError(f"{path} cannot be read: {why}", f"delete {path} and fetch it again (--download)")


def read_idx(path: Path) -> torch.Tensor:
    """Read an idx file (MNIST format), gzip or raw, into a tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # truncated or not gzip at all
        raise corrupt_file(path, f"{type(e).__name__}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise corrupt_file(path, "not an idx file (bad magic number)")
    dtype, ndim = data[2], data[3]
    if dtype not in _IDX_DTYPES:
        raise corrupt_file(path, f"unknown idx dtype code {dtype:#x}")
    if len(data) < 4 + 4 * ndim:
        raise corrupt_file(path, "the idx header is cut short")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[dtype], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise corrupt_file(path, f"header says {dims} = {int(np.prod(dims))} values, file has {arr.size}")
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")).reshape(dims).copy())


def read_cifar_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate CIFAR-10 python batches: images (N, 3, 32, 32) uint8 and labels."""
    xs, ys = [], []
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:  # truncated or foreign
            raise corrupt_file(folder / name, f"not a CIFAR python batch ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def read_cifar_meta(folder: Path) -> list[str]:
    with open(folder / "batches.meta", "rb") as f:
        return list(pickle.load(f, encoding="latin1")["label_names"])


def read_stl10_images(path: Path) -> torch.Tensor:
    """STL-10 binary images: column-major 3x96x96 uint8 -> (N, 3, 96, 96) row-major."""
    arr = np.fromfile(path, dtype=np.uint8)
    if arr.size % (3 * 96 * 96):
        raise corrupt_file(path, f"size {arr.size} is not a multiple of 3*96*96")
    return torch.from_numpy(arr.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2).copy())


def read_stl10_labels(path: Path) -> torch.Tensor:
    """STL-10 labels are 1..10 in the file; returned as 0..9."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1)
