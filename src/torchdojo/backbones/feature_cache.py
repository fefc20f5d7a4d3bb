"""Feature cache for the frozen regime: run the frozen trunk once per (backbone, weights, preprocessing,
dataset split, augmentation view), keep the (N, F) features in a memory-mapped .npy file, and train
the head from it. A frozen trunk in eval mode is a fixed function, so training the head on cached
features is the same computation as running the trunk every epoch, at a fraction of the cost.

    cache = FeatureCache(root)
    key = cache.key(trunk=model.features, backbone="efficientnet_lite0", data=train_split, split="train",
                    preprocessing={"size": 64, "mean": ..., "std": ...}, view="center")
    feats, labels = cache.get_or_extract(key, model.features, batches, device)  # np.memmap, np.ndarray
    fit(model.head, CachedBatches([feats], labels, 256, shuffle=True), ...)

Staleness: the key hashes the trunk's weights and buffers and the split's pixels and labels (content,
not names), so changed weights or data never reuse old features. Interruption: features are written to
a temp file, flushed and renamed, and only then is `<key>.json` written; an entry without its .json is
never read (a partial file is ignored and overwritten).
"""

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchdojo.data.base import ImageData, user_cache
from torchdojo.runs import atomic_write_json


def tensor_hash(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes (content, independent of device)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)  # logical order, whatever the memory format
        h.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_hash(module: nn.Module) -> str:
    """Content hash of a module's parameters and buffers (so BN statistics count too)."""
    state = module.state_dict()
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(tensor_hash(state[k]).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("TORCHDOJO_FEATURE_CACHE", user_cache() / "features"))


class FeatureCache:
    """Memory-mapped feature files under `root`, one per key, each completed by a `<key>.json` marker."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self.extract_seconds = 0.0  # what the features served so far cost to extract (recorded on a hit)

    def key(
        self,
        *,
        trunk: nn.Module,
        backbone: str,
        data: ImageData,
        split: str,
        preprocessing: dict[str, Any],
        view: str = "center",
    ) -> str:
        """A key that changes whenever the weights, the pixels/labels or the preprocessing change."""
        parts = {
            "backbone": backbone,
            "weights": module_hash(trunk),
            "data": tensor_hash(data.x, data.y),
            "split": split,
            "preprocessing": preprocessing,
            "view": view,
        }
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return f"{backbone}-{split}-{view}-{hashlib.sha256(blob).hexdigest()[:24]}"

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.labels.npy", self.root / f"{key}.json"

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (features memmap, labels) for `key`, or None if absent or incomplete."""
        feats, labels, meta = self._paths(key)
        if not meta.exists() or not feats.exists() or not labels.exists():
            return None
        try:
            info = json.loads(meta.read_text())
            f = np.load(feats, mmap_mode="r")  # allow_pickle stays False: an object array is refused, not run
            y = np.load(labels)
            shape = list(info["shape"])
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            return None  # unreadable or hand-made files (object arrays, bad JSON, truncated): a cache miss
        if f.dtype != np.float32 or list(f.shape) != shape or y.ndim != 1 or len(y) != shape[0]:
            return None  # inconsistent files (e.g. replaced by hand): treat as a miss
        return f, y

    @torch.no_grad()
    def extract(
        self,
        key: str,
        trunk: nn.Module,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        n: int,
        device: torch.device,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run `trunk` over `batches` (n examples) into a temp memmap, then publish it under `key`."""
        self.root.mkdir(parents=True, exist_ok=True)
        feats_path, labels_path, meta_path = self._paths(key)
        tmp = self.root / f".{key}.{os.getpid()}.partial.npy"
        was = trunk.training
        trunk.eval()
        start = time.perf_counter()
        out: np.memmap | None = None
        labels = np.empty(n, dtype=np.int64)
        i = 0
        try:
            for x, y in batches:
                f = trunk(x.to(device)).float().cpu().numpy()  # (B, F)
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, f.shape[1]))
                out[i : i + len(f)] = f
                labels[i : i + len(f)] = y.cpu().numpy()
                i += len(f)
            if out is None or i != n:
                raise RuntimeError(f"feature extraction produced {i} rows, expected {n}")
            out.flush()
            del out
            np.save(labels_path, labels)
            os.replace(tmp, feats_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            trunk.train(was)
        seconds = time.perf_counter() - start
        f = np.load(feats_path, mmap_mode="r")
        atomic_write_json(
            meta_path,
            {
                "key": key,
                "shape": list(f.shape),
                "dtype": "float32",
                "seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        return f, labels

    def get_or_extract(
        self,
        key: str,
        trunk: nn.Module,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        n: int,
        device: torch.device,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cached features for `key`, extracting them first on a miss."""
        hit = self.load(key)
        if hit is not None:
            self.hits += 1
            self.extract_seconds += json.loads(self._paths(key)[2].read_text()).get("seconds", 0.0)
            return hit
        self.misses += 1
        start = time.perf_counter()
        out = self.extract(key, trunk, batches, n, device)
        self.extract_seconds += time.perf_counter() - start
        return out


class CachedBatches:
    """Batches (features, labels) from cached views; epoch e reads view (e - 1) mod len(views)."""

    def __init__(
        self,
        views: Sequence[np.ndarray],
        labels: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        in_memory: bool = True,
    ):
        # Head epochs re-read every row; a RAM copy is faster than page-faulting the memmap each epoch.
        self.views = [np.array(v, dtype=np.float32) if in_memory else v for v in views]  # np.array copies
        self.labels = torch.from_numpy(np.asarray(labels))
        self.batch_size, self.shuffle, self.seed, self.device = batch_size, shuffle, seed, torch.device(device)
        self._epoch = 1

    def set_epoch(self, epoch: int) -> "CachedBatches":
        self._epoch = epoch
        return self

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        feats = self.views[(self._epoch - 1) % len(self.views)]
        n = len(self.labels)
        if self.shuffle:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self._epoch))
        else:
            idx = torch.arange(n)
        for i in range(len(self)):
            b = idx[i * self.batch_size : (i + 1) * self.batch_size]
            x = torch.from_numpy(np.asarray(feats[b.numpy()]))
            yield x.to(self.device), self.labels[b].to(self.device)
