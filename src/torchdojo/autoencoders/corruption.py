"""Text corruption for a denoising autoencoder (MISSION G3): token dropout, masking and local shuffling.

Each function takes a token-id list, a rate and a seeded `random.Random`, and returns a new list; the input
is never changed. Rates mean:
- `drop_tokens`: each token is deleted with probability `rate` (at least one token is kept);
- `mask_tokens`: each token is replaced by the mask id with probability `rate`;
- `local_shuffle`: the sentence is cut into windows of `window` tokens and each window is, with probability
  `rate`, put in a random order different from the original (so a token never leaves its window).
"""

import dataclasses
import random
from collections.abc import Sequence

from torchdojo.errors import DojoError


def _check_rate(rate: float, name: str) -> None:
    if not 0.0 <= rate <= 1.0:
        raise DojoError(f"{name} must be in [0, 1], got {rate}")


def drop_tokens(ids: Sequence[int], rate: float, rng: random.Random) -> list[int]:
    """Delete each token with probability `rate`; if all would go, keep one at random."""
    _check_rate(rate, "drop rate")
    kept = [t for t in ids if rng.random() >= rate]
    if not kept and ids:
        kept = [ids[rng.randrange(len(ids))]]
    return kept


def mask_tokens(ids: Sequence[int], rate: float, mask_id: int, rng: random.Random) -> list[int]:
    """Replace each token by `mask_id` with probability `rate`."""
    _check_rate(rate, "mask rate")
    return [mask_id if rng.random() < rate else t for t in ids]


def local_shuffle(ids: Sequence[int], rate: float, rng: random.Random, window: int = 3) -> list[int]:
    """Re-order each `window`-token window with probability `rate` (never to its original order)."""
    _check_rate(rate, "shuffle rate")
    if window < 2:
        raise DojoError(f"shuffle window must be >= 2, got {window}")
    out = list(ids)
    for start in range(0, len(out), window):
        chunk = out[start : start + window]
        if len(chunk) < 2 or rng.random() >= rate:
            continue
        order = list(range(len(chunk)))
        while order == sorted(order):  # a permutation other than the identity (at most a few draws)
            rng.shuffle(order)
        out[start : start + window] = [chunk[j] for j in order]
    return out


@dataclasses.dataclass(frozen=True)
class Corruption:
    """The noise process: shuffle within windows, then drop, then mask; each with its own rate."""

    drop: float = 0.1
    mask: float = 0.15
    shuffle: float = 0.3
    window: int = 3

    def __post_init__(self) -> None:
        for name in ("drop", "mask", "shuffle"):
            _check_rate(getattr(self, name), f"corruption {name} rate")
        if self.window < 2:
            raise DojoError(f"shuffle window must be >= 2, got {self.window}")

    def __call__(self, ids: Sequence[int], mask_id: int, rng: random.Random) -> list[int]:
        """A corrupted copy of `ids`."""
        out = local_shuffle(ids, self.shuffle, rng, self.window) if self.shuffle else list(ids)
        out = drop_tokens(out, self.drop, rng) if self.drop else out
        return mask_tokens(out, self.mask, mask_id, rng) if self.mask else out

    def batch(self, seqs: Sequence[Sequence[int]], mask_id: int, seed: int) -> list[list[int]]:
        """Corrupt every sequence with one generator seeded by `seed` (same seed, same noise)."""
        rng = random.Random(seed)
        return [self(s, mask_id, rng) for s in seqs]
