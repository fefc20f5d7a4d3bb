"""Each text corruption respects its rate (binomial bounds), is seeded, and keeps what it promises."""

import math
import random
from collections import Counter

import pytest

from torchdojo.autoencoders.corruption import Corruption, drop_tokens, local_shuffle, mask_tokens
from torchdojo.errors import DojoError

N = 4_000
IDS = list(range(10, 10 + N))  # distinct tokens, so every change is visible
MASK = 3


def _within(observed: float, rate: float, n: int) -> bool:
    """Observed share within 5 binomial standard deviations of `rate`."""
    return abs(observed - rate) <= 5 * math.sqrt(rate * (1 - rate) / n) + 1e-12


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3, 0.8])
def test_drop_rate(rate: float) -> None:
    out = drop_tokens(IDS, rate, random.Random(1))
    assert _within(1 - len(out) / N, rate, N)
    assert out == [t for t in IDS if t in set(out)]  # survivors keep their order
    assert len(drop_tokens([5, 6], 1.0, random.Random(0))) == 1  # never empty


@pytest.mark.parametrize("rate", [0.0, 0.15, 0.5, 1.0])
def test_mask_rate(rate: float) -> None:
    out = mask_tokens(IDS, rate, MASK, random.Random(2))
    assert len(out) == N
    assert _within(sum(t == MASK for t in out) / N, rate, N)
    assert all(o in (t, MASK) for o, t in zip(out, IDS, strict=True))


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("window", [2, 3, 5])
def test_local_shuffle_rate_and_locality(rate: float, window: int) -> None:
    out = local_shuffle(IDS, rate, random.Random(3), window)
    assert Counter(out) == Counter(IDS)
    windows = N // window
    changed = 0
    for w in range(windows):
        a, b = IDS[w * window : (w + 1) * window], out[w * window : (w + 1) * window]
        assert sorted(a) == sorted(b)  # no token leaves its window
        changed += a != b
    assert _within(changed / windows, rate, windows)


def test_seeded_and_different_seeds_differ() -> None:
    c = Corruption(drop=0.1, mask=0.15, shuffle=0.3)
    seqs = [list(range(i, i + 20)) for i in range(50)]
    assert c.batch(seqs, MASK, seed=7) == c.batch(seqs, MASK, seed=7)
    assert c.batch(seqs, MASK, seed=7) != c.batch(seqs, MASK, seed=8)
    for f in (
        lambda r: drop_tokens(IDS[:200], 0.3, r),
        lambda r: mask_tokens(IDS[:200], 0.3, MASK, r),
        lambda r: local_shuffle(IDS[:200], 0.5, r),
    ):
        assert f(random.Random(5)) == f(random.Random(5))
        assert f(random.Random(5)) != f(random.Random(6))


def test_combined_rates_and_input_untouched() -> None:
    seq = list(IDS)
    out = Corruption(drop=0.1, mask=0.2, shuffle=0.0)(seq, MASK, random.Random(0))
    assert seq == IDS
    assert _within(1 - len(out) / N, 0.1, N)
    assert _within(sum(t == MASK for t in out) / len(out), 0.2, len(out))


def test_bad_rates_are_user_errors() -> None:
    with pytest.raises(DojoError):
        Corruption(drop=1.5)
    with pytest.raises(DojoError):
        mask_tokens([1], -0.1, MASK, random.Random(0))
    with pytest.raises(DojoError):
        local_shuffle([1, 2], 0.5, random.Random(0), window=1)
