"""The synthetic detection set: shapes of three kinds in three colours on a noisy canvas.

Every object carries two labels, its shape and its colour, so a box has two true classes out of six
(square, circle, triangle, red, green, blue): the multi-label case of YOLOv3's independent logistic outputs.
Sizes span small to large and objects may overlap. Rendering is seeded and done in torch, offline.
"""

import dataclasses

import torch

SHAPES = ("square", "circle", "triangle")
COLOURS = ("red", "green", "blue")
CLASSES = SHAPES + COLOURS
_RGB = torch.tensor([[220, 40, 40], [40, 190, 60], [50, 80, 230]], dtype=torch.float32)


@dataclasses.dataclass
class Detections:
    """Canvases (N, 3, S, S) uint8; per canvas its boxes (K, 4) as x1, y1, x2, y2 pixels and labels (K, 2):
    shape index and colour index (colour index + 3 in CLASSES)."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.images)


def _mask(kind: int, h: int, w: int) -> torch.Tensor:
    """A filled rectangle, ellipse or triangle (apex at the top centre) filling an h x w box."""
    yy, xx = torch.meshgrid(
        (torch.arange(h, dtype=torch.float32) + 0.5) / h,
        (torch.arange(w, dtype=torch.float32) + 0.5) / w,
        indexing="ij",
    )
    if kind == 0:
        return torch.ones(h, w, dtype=torch.bool)
    if kind == 1:
        return (yy - 0.5) ** 2 + (xx - 0.5) ** 2 <= 0.25
    return (yy >= 1 - 2 * xx) & (yy >= 2 * xx - 1)


def render(
    n: int, size: int = 64, max_objects: int = 4, min_side: int = 6, max_side: int = 30, seed: int = 0
) -> Detections:
    """`n` canvases of `size` px, each with 1..max_objects objects whose height and width are drawn
    independently and log-uniformly in min_side..max_side px (more small objects than large, aspect ratios from
    tall to wide)."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, size, size, generator=g) * 40).to(torch.uint8)
    boxes, labels = [], []
    for i in range(n):
        k = int(torch.randint(1, max_objects + 1, (1,), generator=g))
        bs, ls = [], []
        for _ in range(k):
            lo, hi = torch.tensor([min_side, max_side + 1], dtype=torch.float32).log()
            h, w = (int(v) for v in (lo + (hi - lo) * torch.rand(2, generator=g)).exp().floor().clamp(max=max_side))
            x0 = int(torch.randint(0, size - w + 1, (1,), generator=g))
            y0 = int(torch.randint(0, size - h + 1, (1,), generator=g))
            shape, colour = int(torch.randint(0, 3, (1,), generator=g)), int(torch.randint(0, 3, (1,), generator=g))
            m = _mask(shape, h, w)
            patch = images[i, :, y0 : y0 + h, x0 : x0 + w]
            patch[:, m] = _RGB[colour].to(torch.uint8).view(3, 1).expand(3, int(m.sum()))
            bs.append([x0, y0, x0 + w, y0 + h])
            ls.append([shape, colour])
        boxes.append(torch.tensor(bs, dtype=torch.float32))
        labels.append(torch.tensor(ls, dtype=torch.int64))
    return Detections(images, boxes, labels)
