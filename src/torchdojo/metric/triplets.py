"""Triplets for the triplet loss (MISSION E2a: "the dataset class must be written by you").

`TripletDataset` draws (anchor, positive, negative) index triplets with a generator seeded from
(seed, epoch): the positive shares the anchor's label (and is a different image), the negative does
not. `TripletBatches` turns them into training batches for the engine: x is the anchors, then the
positives, then the negatives stacked (3T, C, H, W), y their labels (3T,), so a batch is also a plain
labelled batch that in-batch miners and the cross-entropy head can use.
"""

from collections.abc import Iterator, Sequence

import torch

from torchdojo.data.augment import Aug, center_crop_resize
from torchdojo.data.base import ImageData
from torchdojo.errors import DojoError


class TripletDataset:
    """Seeded (anchor, positive, negative) triplets over the images of `data`; `num_triplets` per epoch."""

    def __init__(self, data: ImageData, seed: int = 0, num_triplets: int | None = None):
        y = data.y.cpu()
        counts = torch.bincount(y, minlength=len(data.classes))
        present = counts > 0
        if int(present.sum()) < 2:
            raise DojoError(
                "a triplet needs at least two classes, the data has one",
                "keep two or more classes (--set classes=a,b)",
            )
        if bool((counts[present] < 2).any()):
            raise DojoError(
                "every class needs at least two images to form a positive pair",
                "use a larger subset (train_subset) or drop the class",
            )
        self.data, self.seed = data, seed
        self.num_triplets = num_triplets or len(y) // 3  # default: one epoch sees about len(data) images
        self.labels = y
        self.order = torch.argsort(y, stable=True)  # image indices grouped by class
        self.counts = counts
        self.start = torch.cumsum(counts, 0) - counts  # where each class's group starts in `order`
        self.rank = torch.empty_like(self.order)
        self.rank[self.order] = torch.arange(len(y))  # position of each image in `order`
        self._epoch = 0
        self._cache: tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return self.num_triplets

    def set_epoch(self, epoch: int) -> "TripletDataset":
        self._epoch = epoch
        return self

    def indices(self, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anchor, positive, negative) image indices, each (num_triplets,), for `epoch`."""
        epoch = self._epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n, t = len(self.labels), self.num_triplets
        anchors = torch.randperm(n, generator=g)[:t] if t <= n else torch.randint(0, n, (t,), generator=g)
        ya = self.labels[anchors]
        cnt, start = self.counts[ya], self.start[ya]
        # Positive: a uniform pick among the other cnt-1 members of the anchor's class (skip the anchor).
        r = (torch.rand(t, generator=g) * (cnt - 1)).long().clamp(max=cnt - 2)
        r = r + (r >= self.rank[anchors] - start).long()
        positives = self.order[start + r]
        # Negative: a uniform pick among the n-cnt images of every other class (skip the anchor's group).
        u = (torch.rand(t, generator=g) * (n - cnt)).long().clamp(max=n - cnt - 1)
        u = u + (u >= start).long() * cnt
        negatives = self.order[u]
        out = (anchors, positives, negatives)
        self._cache = (epoch, out)
        return out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Triplet `i` of the current epoch as three uint8 images (C, H, W)."""
        a, p, n = (idx[i] for idx in self.indices())
        return self.data.x[a], self.data.x[p], self.data.x[n]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for i in range(len(self)):
            yield self[i]


class TripletBatches:
    """Normalised batches of `batch_size // 3` triplets: x (3T, C, H, W) = [anchors; positives; negatives]."""

    def __init__(
        self,
        triplets: TripletDataset,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: Aug | None = None,
        seed: int = 0,
        fixed_epoch: int | None = None,  # e.g. validation: the same triplets every epoch
        size: int | None = None,  # resize to size x size (e.g. a pretrained backbone's input)
        channels: int | None = None,  # expand grayscale to this many channels
    ):
        if batch_size < 3:
            raise DojoError(f"a triplet batch needs batch_size >= 3 images, got {batch_size}")
        self.triplets, self.per_batch = triplets, batch_size // 3
        self.augment, self.seed, self.fixed_epoch = augment, seed, fixed_epoch
        self.size, self.channels = size, channels
        dev = triplets.data.x.device
        self.mean = torch.tensor(mean, device=dev).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=dev).view(1, -1, 1, 1) * 255
        self._epoch = 0

    def __len__(self) -> int:
        return -(-len(self.triplets) // self.per_batch)

    def set_epoch(self, epoch: int) -> "TripletBatches":
        self._epoch = epoch
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch if self.fixed_epoch is None else self.fixed_epoch
        a, p, n = self.triplets.indices(epoch)
        data = self.triplets.data
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7919)
        for i in range(len(self)):
            s = slice(i * self.per_batch, (i + 1) * self.per_batch)
            idx = torch.cat([a[s], p[s], n[s]]).to(data.x.device)
            x, y = data.x[idx], data.y[idx]
            if self.augment is not None:
                x = self.augment(x, g)
            yield to_input(x, self.mean, self.std, self.size, self.channels), y


def to_input(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, size: int | None = None, channels: int | None = None
) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> resized (optional), normalised float, channels expanded (optional);
    `mean` and `std` are (1, C, 1, 1) in 0..255 units."""
    x = center_crop_resize(x, None, size)
    x = (x.float() - mean) / std
    if channels is not None and x.shape[1] != channels:
        x = x.expand(-1, channels, -1, -1)
    return x


def split_triplets(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Undo the [anchors; positives; negatives] stacking of a `TripletBatches` batch (3T, ...)."""
    t = len(z) // 3
    return z[:t], z[t : 2 * t], z[2 * t : 3 * t]
