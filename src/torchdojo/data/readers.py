"""Readers for the datasets' published binary formats: MNIST idx, CIFAR-10 pickles, STL-10 binaries.

Dataset files are untrusted input: a folder given with --data-dir may come from anywhere. Nothing in
them is ever run: CIFAR python batches are pickles, read by `SafeUnpickler`, which builds only the
containers and numpy arrays the format holds and refuses any other global (a crafted pickle's
os.system, builtins.open, ... ) before it is called. Every reader checks what it read (shapes, dtypes,
counts, label range) so a damaged or foreign file is a `DojoError` naming it, not a traceback later.
"""

import gzip
import io
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchdojo.errors import DojoError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Larger than any idx dataset (EMNIST byclass is 0.55 GB): a header asking for more is not a dataset.
MAX_IDX_BYTES = 4 << 30


def first_existing(folder: Path, name: str) -> Path:
    """`name` or `name.gz` in `folder`, whichever exists (raw files win)."""
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.exists():
            return cand
    raise FileNotFoundError(folder / name)


def corrupt_file(path: Path, why: str) -> DojoError:
    """The error for a dataset file that cannot be read: name it and say how to replace it."""
    return DojoError(f"{path} cannot be read: {why}", f"delete {path} and fetch it again (--download)")


# ---- MNIST idx ---------------------------------------------------------------------------------------------


def read_idx(path: Path) -> torch.Tensor:
    """Read an idx file (MNIST format), gzip or raw, into a tensor. The header is read first and then exactly
    the bytes it announces (one more to detect trailing data), so a gzip bomb or a huge stray file is never
    read whole."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise corrupt_file(path, "not an idx file (bad magic number)")
            dtype, ndim = head[2], head[3]
            if dtype not in _IDX_DTYPES:
                raise corrupt_file(path, f"unknown idx dtype code {dtype:#x}")
            dim_bytes = f.read(4 * ndim)
            if len(dim_bytes) < 4 * ndim:
                raise corrupt_file(path, "the idx header is cut short")
            dims = struct.unpack(f">{ndim}I", dim_bytes)
            n_values = math.prod(dims)
            itemsize = np.dtype(_IDX_DTYPES[dtype]).itemsize
            if n_values * itemsize > MAX_IDX_BYTES:
                raise corrupt_file(
                    path,
                    f"header says {dims} = {n_values} values ({n_values * itemsize} bytes), too large for an idx file",
                )
            body = f.read(n_values * itemsize + 1)
    except DojoError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as e:  # truncated, not gzip at all, bad deflate data
        raise corrupt_file(path, f"{type(e).__name__}: {e}") from None
    if len(body) != n_values * itemsize:
        got = len(body) // itemsize if len(body) <= n_values * itemsize else "more"
        raise corrupt_file(
            path,
            f"header says {dims} = {n_values} values ({n_values * itemsize} bytes), file has "
            f"{got} ({'truncated' if len(body) < n_values * itemsize else 'trailing data'})",
        )
    arr = np.frombuffer(body, dtype=_IDX_DTYPES[dtype])
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")).reshape(dims).copy())


def check_images(path: Path, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
    """An images file holds uint8 (N, *shape) (any (N, H, W) when `shape` is None)."""
    if x.dtype != torch.uint8 or x.ndim != 3 or len(x) == 0 or (shape is not None and tuple(x.shape[1:]) != shape):
        want = f"(N, {', '.join(map(str, shape))})" if shape else "(N, H, W)"
        raise corrupt_file(path, f"not an images file: holds {x.dtype} {tuple(x.shape)}, expected uint8 {want}")


def check_labels(images: Path, labels_path: Path, n_images: int, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """A labels file: integers, one per image, each a class index 0..n_classes-1. Returns them as int64."""
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise corrupt_file(labels_path, f"not a labels file: holds {y.dtype} {tuple(y.shape)}, expected (N,) integers")
    if len(y) != n_images:
        raise DojoError(
            f"{images} holds {n_images} images but {labels_path} holds {len(y)} labels",
            "the two files are from different versions of the dataset, or one is damaged: delete both and fetch "
            "them again (--download)",
        )
    y = y.long()
    bad = ((y < 0) | (y >= n_classes)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise _out_of_range(labels_path, len(bad), i, int(y[i]), n_classes)
    return y


def _out_of_range(path: Path, n_bad: int, i: int, label: int, n_classes: int) -> DojoError:
    return corrupt_file(
        path,
        f"{n_bad} {'labels are' if n_bad != 1 else 'label is'} outside 0..{n_classes - 1} (the dataset has "
        f"{n_classes} classes); "
        f"the first is label {label} of image {i}",
    )


# ---- CIFAR python batches: a restricted unpickler ----------------------------------------------------------


def _latin1(value: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """What `_codecs.encode` does for Python 3 pickles of bytes (protocol < 3), and only that."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(value, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return value.encode("latin1", errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy names a pickled ndarray (and its dtype) refers to, under numpy 1.x and 2.x module paths."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2 (numpy.core is a deprecated alias)
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct  # ndarray, protocols 0-4
        out[(f"{mod}.multiarray", "scalar")] = multiarray.scalar  # a numpy scalar (e.g. np.int64 labels)
        out[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer  # ndarray, protocol 5
    return out


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain data: dicts, lists, tuples, str, bytes, numbers (pickle opcodes, no globals needed)
    and numpy arrays and dtypes. Any other global a pickle names (os.system, builtins.eval, subprocess.Popen,
    ...) is refused with a DojoError naming the file, before anything is called: nothing in the file runs."""

    ALLOWED: dict[tuple[str, str], Any] = {
        **_numpy_globals(),
        ("_codecs", "encode"): _latin1,  # bytes, as Python 3 writes them with protocol 2
        ("builtins", "bytes"): bytes,  # b"" with protocol 2
        ("__builtin__", "bytes"): bytes,
    }

    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="latin1")  # Python 2 str (the official files) -> str, as numpy expects
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise DojoError(
                f"{self.path} is not a plain CIFAR data file: its pickle asks for {module}.{name}, which the "
                "format never uses; refused, nothing in the file was run",
                f"do not use this file: delete {self.path} and get the dataset from its publisher "
                "(--download); --no-verify does not change this",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not part of the format")


def safe_unpickle(path: Path, what: str) -> Any:
    """The object pickled in `path`, read with `SafeUnpickler`; a damaged file is a DojoError naming it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise corrupt_file(path, f"{type(e).__name__}: {e}") from None
    try:
        return SafeUnpickler(io.BytesIO(data), path).load()
    except DojoError:
        raise
    except Exception as e:  # truncated, garbage, foreign: any failure of plain-data unpickling
        raise corrupt_file(path, f"not {what} ({type(e).__name__}: {e})") from None


def _str_keys(obj: Any, path: Path, what: str) -> dict[str, Any]:
    """The dict of a CIFAR file with its keys as str (pickles written with bytes keys have b"data", ...)."""
    if not isinstance(obj, dict):
        raise corrupt_file(path, f"not {what} (holds a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _text(v: Any) -> Any:
    return v.decode("latin1") if isinstance(v, bytes) else v


def read_cifar_batch(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10/100 python batch: images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..n_classes-1."""
    what = "a CIFAR python batch"
    entry = _str_keys(safe_unpickle(path, what), path, what)
    data = entry.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise corrupt_file(path, f"not {what}: 'data' is {got}, expected a uint8 array (N, 3072)")
    if len(data) == 0:
        raise corrupt_file(path, f"not {what}: it holds no images")
    key = "labels" if "labels" in entry else "fine_labels"
    labels = entry.get(key)
    if isinstance(labels, np.ndarray):
        labels = labels.tolist() if labels.ndim == 1 and labels.dtype.kind in "iu" else None
    if not isinstance(labels, list) or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels
    ):
        raise corrupt_file(path, f"not {what}: 'labels' (or 'fine_labels') is not a list of integers")
    if len(labels) != len(data):
        raise corrupt_file(path, f"it holds {len(data)} images but {len(labels)} labels")
    bad = [i for i, v in enumerate(labels) if not 0 <= v < n_classes]  # before int64: a label may be 2**70
    if bad:
        raise _out_of_range(path, len(bad), bad[0], int(labels[bad[0]]), n_classes)
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def read_cifar_batches(folder: Path, names: list[str], n_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate CIFAR-10 python batches: images (N, 3, 32, 32) uint8 and labels."""
    parts = [read_cifar_batch(folder / name, n_classes) for name in names]
    xs, ys = zip(*parts, strict=True)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def read_cifar_meta(folder: Path, key: str = "label_names") -> list[str]:
    """The class names of a CIFAR python `batches.meta` (CIFAR-100's `meta`: key 'fine_label_names')."""
    path = folder / "batches.meta"
    what = "a CIFAR batches.meta file"
    meta = _str_keys(safe_unpickle(path, what), path, what)
    names = meta.get(key)
    if not isinstance(names, list | tuple) or not names or not all(isinstance(_text(n), str) for n in names):
        raise corrupt_file(path, f"not {what}: {key!r} is not a list of class names")
    names = [_text(n) for n in names]
    if len(set(names)) != len(names):
        raise corrupt_file(path, f"not {what}: {key!r} repeats a class name")
    return names


# ---- STL-10 binaries ---------------------------------------------------------------------------------------


def read_stl10_images(path: Path) -> torch.Tensor:
    """STL-10 binary images: column-major 3x96x96 uint8 -> (N, 3, 96, 96) row-major."""
    arr = np.fromfile(path, dtype=np.uint8)
    if arr.size % (3 * 96 * 96) or arr.size == 0:
        raise corrupt_file(path, f"size {arr.size} is not a (non-zero) multiple of 3*96*96")
    return torch.from_numpy(arr.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2).copy())


def read_stl10_labels(path: Path) -> torch.Tensor:
    """STL-10 labels are 1..10 in the file; returned as 0..9 (checked against the images by the caller)."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1)
