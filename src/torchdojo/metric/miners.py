"""In-batch triplet miners on L2-normalised embeddings: batch-hard and semi-hard (MISSION E2).

Both return index tensors (anchors, positives, negatives) into the batch. They match
pytorch-metric-learning's `BatchHardMiner` and `TripletMarginMiner(type_of_triplets="semihard")`
(tests check this); `pml_miner` uses those directly when `miner_impl=pml` is chosen.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from torchdojo.errors import DojoError

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Miner = Callable[[torch.Tensor, torch.Tensor], Triplets]
MINERS = ("none", "batch-hard", "semi-hard")


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, B) between the L2-normalised rows of `emb` (B, D); 0 on the diagonal."""
    z = F.normalize(emb, dim=1)
    sq = (2 - 2 * z @ z.T).clamp_min(0)  # |a - b|^2 = 2 - 2 a.b for unit vectors
    return sq.fill_diagonal_(0).sqrt()


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same  # positive pairs (not self), negative pairs


def batch_hard(emb: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """For each anchor with a positive and a negative: its farthest positive and its nearest negative."""
    d = pairwise_distances(emb)
    pos, neg = _masks(labels)
    keep = pos.any(1) & neg.any(1)
    hardest_pos = d.masked_fill(~pos, float("-inf")).argmax(1)
    hardest_neg = d.masked_fill(~neg, float("inf")).argmin(1)
    anchors = torch.nonzero(keep).flatten()
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


def semi_hard(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Every (a, p, n) whose negative is farther than the positive but inside the margin:
    0 < d(a, n) - d(a, p) <= margin (FaceNet's semi-hard triplets)."""
    d = pairwise_distances(emb)
    pos, neg = _masks(labels)
    gap = d[:, None, :] - d[:, :, None]  # (A, P, N): d(a, n) - d(a, p)
    valid = pos[:, :, None] & neg[:, None, :] & (gap > 0) & (gap <= margin)
    a, p, n = torch.nonzero(valid, as_tuple=True)
    return a, p, n


def build_miner(kind: str, margin: float, impl: str = "torchdojo") -> Miner | None:
    """The miner named `kind` ('none' -> None: use the triplets as drawn); impl 'pml' uses the library."""
    if kind not in MINERS:
        raise DojoError(f"unknown miner {kind!r}", f"choose one of {', '.join(MINERS)}")
    if kind == "none":
        return None
    if impl == "pml":
        return pml_miner(kind, margin)
    if impl != "torchdojo":
        raise DojoError(f"unknown miner_impl {impl!r}", "choose torchdojo or pml")
    if kind == "batch-hard":
        return batch_hard
    return lambda emb, labels: semi_hard(emb, labels, margin)


def pml_miner(kind: str, margin: float) -> Miner:
    """pytorch-metric-learning's miner for `kind`, returning (anchors, positives, negatives)."""
    try:
        from pytorch_metric_learning import miners
    except ImportError:
        raise DojoError(
            "miner_impl=pml needs pytorch-metric-learning",
            "pip install 'torchdojo[metric]' or use miner_impl=torchdojo",
        ) from None
    m = (
        miners.BatchHardMiner()
        if kind == "batch-hard"
        else miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")
    )

    def mine(emb: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n = m(emb, labels)
        return a, p, n

    return mine
