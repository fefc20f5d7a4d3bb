"""Batched augmentations: shapes and dtypes kept, independent parameters per image, seeded."""

import pytest
import torch

from torchdojo.data.augment import (
    AUGMENTATIONS,
    build_augment,
    center_crop_resize,
    horizontal_flip,
    random_crop,
)
from torchdojo.errors import DojoError


def _batch(dtype: torch.dtype = torch.uint8, b: int = 16, c: int = 3, h: int = 12, w: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (b, c, h, w), generator=g)  # no zeros: padding/erasing shows as zeros
    return x.to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_and_dtype_kept(name, dtype):
    x = _batch(dtype)
    y = AUGMENTATIONS.get(name)()(x, _gen())
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_seeded_reproducible_and_seed_matters(name):
    x = _batch()
    op = AUGMENTATIONS.get(name)()
    a, b, c = op(x, _gen(1)), op(x, _gen(1)), op(x, _gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_crop_params_are_independent_per_image():
    """Each image gets its own offset: the shifts recovered per image are not all equal."""
    x = torch.arange(12 * 10).reshape(1, 1, 12, 10).float().add(1).expand(16, 3, 12, 10).contiguous()
    y = random_crop(padding=3)(x, _gen())
    # Every output is a shifted copy of the same image; its shift shows in where the top-left value lands.
    shifts = set()
    for i in range(16):
        inside = y[i, 0][y[i, 0] > 0]
        first = inside[0].item() - 1  # flat index (row * 10 + col) of the first visible source pixel
        shifts.add(divmod(int(first), 10))
    assert len(shifts) > 3


def test_crop_is_a_shifted_window_with_zero_padding():
    x = _batch(torch.float32, b=64)
    y = random_crop(padding=2)(x, _gen())
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):  # each output equals one of the 25 windows of its padded input
        assert any(torch.equal(y[i], xp[i, :, dy : dy + 12, dx : dx + 10]) for dy in range(5) for dx in range(5))


def test_crop_padding_zero_is_identity():
    x = _batch()
    assert torch.equal(random_crop(padding=0)(x, _gen()), x)


def test_flip_p1_equals_flip_and_p0_is_identity():
    x = _batch()
    assert torch.equal(horizontal_flip(p=1.0)(x, _gen()), x.flip(-1))
    assert torch.equal(horizontal_flip(p=0.0)(x, _gen()), x)


def test_flip_is_per_image():
    x = _batch(b=64)
    y = horizontal_flip(p=0.5)(x, _gen())
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_erase_and_jitter_are_per_image():
    x = _batch(b=32)
    erased = AUGMENTATIONS.get("erase")(p=1.0)(x, _gen())
    zeros = (erased == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and len(set(zeros.tolist())) > 3  # a rectangle each, of different sizes
    jit = AUGMENTATIONS.get("jitter")(0.5)(x.float(), _gen())
    ratio = jit.mean((1, 2, 3)) / x.float().mean((1, 2, 3))
    assert ratio.std() > 0.05


def test_build_augment_composes_in_order_and_rejects_unknown():
    x = _batch()
    assert build_augment([]) is None
    aug = build_augment(["crop", "flip"], crop_padding=0)
    g1, g2 = _gen(3), _gen(3)
    expected = horizontal_flip()(random_crop(0)(x, g2), g2)
    assert torch.equal(aug(x, g1), expected)
    with pytest.raises(DojoError, match="unknown augmentation 'rotate'") as e:
        build_augment(["crop", "rotate"])
    assert "crop" in e.value.fix and "flip" in e.value.fix


def test_center_crop_resize_sizes():
    x = _batch(h=32, w=32)
    assert center_crop_resize(x, None, None) is x
    c = center_crop_resize(x, 24, None)
    assert c.shape == (16, 3, 24, 24) and torch.equal(c, x[..., 4:28, 4:28])
    r = center_crop_resize(x, 24, 48)
    assert r.shape == (16, 3, 48, 48) and r.dtype == torch.float32
    assert center_crop_resize(x, 40, None).shape == (16, 3, 32, 32)  # a crop larger than the image is a no-op
    flat = torch.full((2, 1, 8, 8), 7, dtype=torch.uint8)
    assert torch.allclose(center_crop_resize(flat, None, 20), torch.full((2, 1, 20, 20), 7.0))
