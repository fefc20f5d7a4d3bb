"""Padding with masks and length bucketing, so that batches of variable-length sentences waste little padding.

`bucket_batches` sorts indices by length inside large shuffled pools (`pool` batches each), cuts them into
batches of neighbours, and shuffles the batch order: batches stay random across epochs but their members
have similar lengths. `TextBatches` iterates (ids, lengths, mask, labels) on a device, epoch-seeded.
"""

import random
from collections.abc import Iterator, Sequence

import torch


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad id lists -> ids (B, T) long, lengths (B,) long, mask (B, T) bool (True on real tokens)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    t = int(lengths.max()) if len(seqs) else 0
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    return ids, lengths, mask


def bucket_batches(
    lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True, pool: int = 50
) -> list[list[int]]:
    """Index batches of similar lengths: sorted within shuffled pools of `pool` batches, batch order shuffled.

    Without `shuffle`, all indices are sorted by length (stable) and cut in order: deterministic evaluation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = list(range(len(lengths)))
    rng = random.Random(seed)
    if not shuffle:
        idx.sort(key=lambda i: lengths[i])
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    rng.shuffle(idx)
    span = batch_size * max(pool, 1)
    batches: list[list[int]] = []
    for start in range(0, len(idx), span):
        chunk = sorted(idx[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded (B, T) cells that are padding, over all batches."""
    real = padded = 0
    for b in batches:
        ls = [lengths[i] for i in b]
        real += sum(ls)
        padded += max(ls, default=0) * len(ls)
    return 1.0 - real / max(padded, 1)


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Plain shuffled batches (no bucketing), to compare padding against."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return [idx[i : i + batch_size] for i in range(0, n, batch_size)]


class TextBatches:
    """Encoded sentences in bucketed batches: yields (ids (B, T), lengths (B,), mask (B, T), labels (B,))."""

    def __init__(
        self,
        seqs: Sequence[Sequence[int]],
        labels: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        bucket: bool = True,
        pad_id: int = 0,
        max_len: int = 0,
        device: torch.device | str = "cpu",
    ):
        if len(seqs) != len(labels):
            raise ValueError(f"{len(seqs)} sequences but {len(labels)} labels")
        # Empty sentences keep one pad token so every row has length >= 1; max_len keeps the first tokens.
        self.seqs = [list(s[:max_len] if max_len else s) or [pad_id] for s in seqs]
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.batch_size, self.shuffle, self.seed, self.bucket = batch_size, shuffle, seed, bucket
        self.pad_id, self.device, self.epoch = pad_id, torch.device(device), 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently (but reproducibly) in each epoch."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's index batches."""
        lengths = [len(s) for s in self.seqs]
        seed = self.seed * 1000 + self.epoch
        if self.bucket:
            return bucket_batches(lengths, self.batch_size, seed, self.shuffle)
        if self.shuffle:
            return random_batches(len(lengths), self.batch_size, seed)
        n, bs = len(lengths), self.batch_size
        return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]

    def __len__(self) -> int:
        return -(-len(self.seqs) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        for b in self.batches():
            ids, lengths, mask = pad_batch([self.seqs[i] for i in b], self.pad_id)
            yield (ids.to(self.device), lengths.to(self.device), mask.to(self.device), self.labels[b].to(self.device))
