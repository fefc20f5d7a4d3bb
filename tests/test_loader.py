"""TensorBatches: every index once per epoch, epoch-seeded order (the resume property), normalisation,
and shards that split an epoch between ranks."""

import pytest
import torch

from torchdojo.data import ImageData
from torchdojo.data.augment import build_augment
from torchdojo.data.loader import TensorBatches


def _data(n: int = 50, c: int = 1, hw: int = 4) -> ImageData:
    """Image i is filled with the value i % 256, label i: a batch shows which indices it holds."""
    x = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, c, hw, hw).contiguous()
    return ImageData(x, torch.arange(n), [str(i) for i in range(n)])


def _epoch(b: TensorBatches, e: int) -> list[int]:
    return [i for _, y in b.set_epoch(e) for i in y.tolist()]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 50, 64])
def test_every_index_exactly_once_per_epoch(shuffle, batch_size):
    b = TensorBatches(_data(), batch_size, [0.0], [1.0], shuffle=shuffle, seed=3)
    for e in (1, 2):
        seen = _epoch(b, e)
        assert sorted(seen) == list(range(50))
    assert len(b) == -(-50 // batch_size) == len(list(b))
    if not shuffle:
        assert _epoch(b, 5) == list(range(50))


def test_drop_last():
    b = TensorBatches(_data(), 16, [0.0], [1.0], shuffle=True, drop_last=True)
    batches = list(b.set_epoch(1))
    assert len(b) == 3 == len(batches) and all(len(y) == 16 for _, y in batches)


def test_shuffled_order_depends_on_epoch_and_seed_only():
    b = TensorBatches(_data(), 8, [0.0], [1.0], shuffle=True, seed=1)
    e1, e2 = _epoch(b, 1), _epoch(b, 2)
    assert e1 != e2 and e1 != list(range(50))
    fresh = TensorBatches(_data(), 8, [0.0], [1.0], shuffle=True, seed=1)  # e.g. after a resume
    assert _epoch(fresh, 2) == e2 and _epoch(fresh, 1) == e1
    assert _epoch(b, 1) == e1  # re-iterating an epoch repeats it
    other = TensorBatches(_data(), 8, [0.0], [1.0], shuffle=True, seed=2)
    assert _epoch(other, 1) != e1


def test_augmentation_is_epoch_seeded():
    data = ImageData(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20), ["a"] * 20)

    def mk() -> TensorBatches:
        return TensorBatches(data, 5, [0.5] * 3, [0.25] * 3, shuffle=True, augment=build_augment(["crop", "flip"]))

    a = [x for x, _ in mk().set_epoch(4)]
    b = [x for x, _ in mk().set_epoch(4)]
    c = [x for x, _ in mk().set_epoch(5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(p.shape == q.shape and torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_normalisation_per_channel():
    x = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    x[:, 0] = 255
    x[:, 1] = 51
    data = ImageData(x, torch.zeros(4, dtype=torch.long), ["a"])
    mean, std = (0.5, 0.2, 0.0), (0.5, 0.1, 1.0)
    ((xb, yb),) = list(TensorBatches(data, 4, mean, std))
    assert xb.dtype == torch.float32 and xb.shape == (4, 3, 2, 2)
    assert torch.allclose(xb[:, 0], torch.tensor(1.0))  # (1.0 - 0.5) / 0.5
    assert torch.allclose(xb[:, 1], torch.tensor(0.0), atol=1e-6)  # (0.2 - 0.2) / 0.1
    assert torch.allclose(xb[:, 2], torch.tensor(0.0))


def test_grayscale_to_rgb_crop_and_resize():
    b = TensorBatches(_data(c=1, hw=8), 10, [0.0], [1.0], crop=6, size=12, channels=3)
    x, _ = next(iter(b))
    assert x.shape == (10, 3, 12, 12)
    assert torch.equal(x[:, 0], x[:, 2])


@pytest.mark.parametrize("n,world", [(48, 4), (50, 4), (7, 3), (3, 4)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_cover_the_epoch_and_are_disjoint(n, world, shuffle):
    shards = [
        TensorBatches(_data(n), 5, [0.0], [1.0], shuffle=shuffle, seed=9, rank=r, world_size=world)
        for r in range(world)
    ]
    got = [_epoch(s, 3) for s in shards]
    per = -(-n // world)
    assert all(len(g) == per for g in got)  # same number of samples on every rank (DDP needs equal steps)
    flat = [i for g in got for i in g]
    assert set(flat) == set(range(n))  # covering
    # disjoint up to the padding that evens out the shards: exactly per*world - n repeats
    assert len(flat) - len(set(flat)) == per * world - n
    if n % world == 0:
        assert len(set(flat)) == len(flat)


def test_shards_with_drop_last_are_disjoint():
    shards = [
        TensorBatches(_data(50), 4, [0.0], [1.0], shuffle=True, drop_last=True, rank=r, world_size=4) for r in range(4)
    ]
    got = [set(_epoch(s, 1)) for s in shards]
    assert all(len(g) == 12 for g in got)  # 50 // 4, each in 3 full batches of 4
    assert len(set().union(*got)) == 48
