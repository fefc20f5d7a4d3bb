"""Boxes (x1, y1, x2, y2): IoU, non-maximum suppression and anchor priors by k-means."""

import torch


def area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection over union of boxes a (N, 4) and b (M, 4)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / union.clamp_min(1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: repeatedly keep the highest-scoring box and drop every remaining box
    whose IoU with it exceeds `threshold`. Indices of the kept boxes, by decreasing score (ties: lower index
    first, as torchvision.ops.nms)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = iou(boxes, boxes)
    alive = torch.ones(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if not alive[i]:
            continue
        keep.append(i)
        alive &= overlaps[i] <= threshold
        alive[i] = False
    return torch.tensor(keep, dtype=torch.int64)


def wh_iou(wh: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """(N, K) IoU of boxes and priors given as (w, h), both centred at the same point (the k-means distance)."""
    inter = torch.minimum(wh[:, None, 0], priors[None, :, 0]) * torch.minimum(wh[:, None, 1], priors[None, :, 1])
    return inter / (wh[:, None].prod(-1) + priors[None].prod(-1) - inter).clamp_min(1e-12)


def kmeans(wh: torch.Tensor, k: int, metric: str, seed: int = 0, iters: int = 100) -> torch.Tensor:
    """k box priors (w, h) by k-means on the boxes' sizes: `metric` "iou" uses the distance 1 - IoU (YOLOv2),
    "euclidean" the plain distance in (w, h), which lets large boxes dominate. Sorted by area."""
    g = torch.Generator().manual_seed(seed)
    centres = wh[torch.randperm(len(wh), generator=g)[:k]].clone()
    for _ in range(iters):
        d = 1 - wh_iou(wh, centres) if metric == "iou" else torch.cdist(wh, centres)
        assign = d.argmin(1)
        new = torch.stack([wh[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    return centres[centres.prod(-1).argsort()]


def mean_best_iou(wh: torch.Tensor, priors: torch.Tensor) -> float:
    """The average over boxes of the IoU with their best prior: how well the priors cover the boxes."""
    return float(wh_iou(wh, priors).max(1).values.mean())
