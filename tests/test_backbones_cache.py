"""Feature cache: hit after miss, invalidation by content (weights, pixels, preprocessing), interruption
safety (a partial file is never read as complete), and cached batches cycling augmented views."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from torchdojo.backbones.feature_cache import CachedBatches, FeatureCache
from torchdojo.data import ImageData
from torchdojo.data.loader import TensorBatches


class CountingTrunk(nn.Module):
    """A tiny trunk that counts the images it has seen."""

    def __init__(self, fail_after: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.seen = 0
        self.fail_after = fail_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after and self.seen >= self.fail_after:
            raise KeyboardInterrupt  # an interruption in the middle of extraction
        self.seen += len(x)
        return self.bn(self.conv(x)).mean((2, 3))  # (B, 4)


def _data(seed: int = 0, n: int = 20) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    return ImageData(
        torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
        torch.randint(0, 3, (n,), generator=g),
        ["a", "b", "c"],
    )


def _extract(cache: FeatureCache, trunk: nn.Module, data: ImageData, prep: dict | None = None):
    prep = prep or {"size": 8}
    key = cache.key(trunk=trunk, backbone="toy", data=data, split="train", preprocessing=prep)
    b = TensorBatches(data, 8, (0.5,), (0.25,))
    return key, cache.get_or_extract(key, trunk, b, len(data), torch.device("cpu"))


def test_miss_then_hit_gives_the_trunks_features(tmp_path):
    torch.manual_seed(0)
    trunk, data, cache = CountingTrunk(), _data(), FeatureCache(tmp_path)
    key, (feats, labels) = _extract(cache, trunk, data)
    assert trunk.seen == 20 and cache.misses == 1 and isinstance(feats, np.memmap)
    with torch.no_grad():
        x, _ = next(iter(TensorBatches(data, 20, (0.5,), (0.25,))))
        np.testing.assert_allclose(feats, trunk.eval()(x).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels, data.y.numpy())
    seen = trunk.seen
    _, (again, _) = _extract(cache, trunk, data)
    assert trunk.seen == seen and cache.hits == 1  # the trunk did not run again
    np.testing.assert_array_equal(again, feats)
    assert json.loads((tmp_path / f"{key}.json").read_text())["shape"] == [20, 4]


def test_cache_invalidation(tmp_path):
    torch.manual_seed(0)
    trunk, data, cache = CountingTrunk(), _data(), FeatureCache(tmp_path)
    key0, _ = _extract(cache, trunk, data)
    with torch.no_grad():
        trunk.conv.weight[0, 0, 0, 0] += 1e-3  # a weight changes
    key1, _ = _extract(cache, trunk, data)
    trunk.bn.running_mean[0] += 1.0  # a BN statistic changes
    key2, _ = _extract(cache, trunk, data)
    pixels = _data()
    pixels.x[3, 0, 2, 2] ^= 1  # one pixel of one image changes
    key3, _ = _extract(cache, trunk, pixels)
    relabelled = _data()
    relabelled.y[0] = (relabelled.y[0] + 1) % 3
    key4, _ = _extract(cache, trunk, relabelled)
    key5, _ = _extract(cache, trunk, data, {"size": 16})  # other preprocessing
    keys = [key0, key1, key2, key3, key4, key5]
    assert len(set(keys)) == 6 and cache.misses == 6 and cache.hits == 0
    assert trunk.seen == 6 * 20


def test_interrupted_extraction_is_never_read(tmp_path):
    torch.manual_seed(0)
    data, cache = _data(), FeatureCache(tmp_path)
    trunk = CountingTrunk(fail_after=8)
    with pytest.raises(KeyboardInterrupt):
        _extract(cache, trunk, data)
    key = cache.key(trunk=trunk, backbone="toy", data=data, split="train", preprocessing={"size": 8})
    assert cache.load(key) is None and not list(tmp_path.glob("*.json"))
    assert not list(tmp_path.glob(".*partial*"))  # the temp file is cleaned up
    # A features file without its completion marker (killed between rename and marker) is not trusted either.
    np.save(tmp_path / f"{key}.npy", np.zeros((20, 4), np.float32))
    np.save(tmp_path / f"{key}.labels.npy", np.zeros(20, np.int64))
    assert cache.load(key) is None
    trunk.fail_after = 0
    _, (feats, _) = _extract(cache, trunk, data)
    assert cache.misses == 2 and np.abs(np.asarray(feats)).sum() > 0  # re-extracted, not the zeros


def test_cached_batches_cycle_views_and_shuffle_by_epoch():
    views = [np.full((10, 2), v, np.float32) for v in range(3)]
    labels = np.arange(10)
    b = CachedBatches(views, labels, 4, shuffle=True, seed=1)
    assert len(b) == 3
    seen = []
    for epoch in (1, 2, 3, 4):
        xs, ys = zip(*b.set_epoch(epoch), strict=True)
        assert {float(x[0, 0]) for x in xs} == {float((epoch - 1) % 3)}
        ys = torch.cat(ys)
        assert sorted(ys.tolist()) == list(range(10))
        seen.append(ys.tolist())
    assert seen[0] != seen[1]
    assert seen[0] == [y.item() for _, yb in b.set_epoch(1) for y in yb]  # same epoch, same order
