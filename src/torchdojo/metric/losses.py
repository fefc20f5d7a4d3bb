"""The objectives of E1, E2 and E4 as engine loss functions `loss_fn(model, x, y) -> (loss, logits|None)`.

- E2 stage 1: `TripletObjective(ce_weight=0)`: triplet loss on the embedding, the head is not used.
- E2 stage 2: `head_only_cross_entropy`: the extractor runs frozen in eval mode, only the head learns.
- E4: `TripletObjective(ce_weight=lam)`: L = L_triplet + lam * L_CE on the whole model at once.
E1 is the engine's own cross-entropy.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo.metric.miners import Miner
from torchdojo.metric.triplets import split_triplets


def triplet_margin_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(max(0, |a-p| - |a-n| + margin)) on L2-normalised embeddings (T, D); 0 for no triplets."""
    if len(a) == 0:
        return a.sum() * 0.0  # keeps the graph (and the device) when a batch mines no triplet
    za, zp, zn = (F.normalize(t, dim=1) for t in (a, p, n))
    # eps inside the sqrt: a finite gradient when two embeddings coincide (duplicates, collapse)
    d_ap = ((za - zp).pow(2).sum(1) + 1e-12).sqrt()
    d_an = ((za - zn).pow(2).sum(1) + 1e-12).sqrt()
    return F.relu(d_ap - d_an + margin).mean()


class TripletObjective:
    """Triplet loss on `model.features(x)` (+ `ce_weight` * cross-entropy of `model.head`), with the
    triplets as drawn by `TripletBatches` (miner None) or mined in the batch. Without the CE term the
    logits it returns are `centroid_logits` of the embedding (they never enter the loss), so a triplet
    stage still reports an accuracy. Keeps per-epoch means of its parts for the report (`pop_stats`)."""

    def __init__(self, margin: float = 0.2, miner: Miner | None = None, ce_weight: float = 0.0):
        self.margin, self.miner, self.ce_weight = margin, miner, ce_weight
        self._sums: dict[str, float] = {}
        self._n = 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        emb = model.features(x)  # (3T, D)
        if self.miner is None:
            a, p, n = split_triplets(emb)
            mined = len(a)
        else:
            ia, ip, ineg = self.miner(emb.detach(), y)
            a, p, n, mined = emb[ia], emb[ip], emb[ineg], len(ia)
        l_trip = triplet_margin_loss(a, p, n, self.margin)
        loss, logits = l_trip, centroid_logits(emb.detach(), y)
        parts = {"triplet": l_trip.detach(), "triplets": torch.tensor(float(mined))}
        if self.ce_weight > 0:
            logits = model.head(emb)
            l_ce = F.cross_entropy(logits, y)
            loss = l_trip + self.ce_weight * l_ce
            parts["ce"] = l_ce.detach()
        for k, v in parts.items():  # tensors summed lazily: no device sync per step
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._n += 1
        return loss, logits

    def pop_stats(self) -> dict[str, float]:
        """Mean triplet loss, CE loss and mined triplets per batch since the last call."""
        out = {k: float(v) / max(self._n, 1) for k, v in self._sums.items()}
        self._sums, self._n = {}, 0
        return out


def centroid_logits(emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K) cosine similarity of each unit embedding to the unit centroid of each class in the batch,
    leaving the sample itself out of its own class; -2 where a class has no other member. The argmax is
    a leave-one-out nearest-centroid vote: an accuracy of the embedding alone, without any head."""
    with torch.autocast(emb.device.type, enabled=False):  # fp32 throughout, also under bf16 autocast
        return _centroid_logits(F.normalize(emb.float(), dim=1), y)


def _centroid_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k = int(y.max()) + 1
    onehot = F.one_hot(y, k).float()  # (B, K)
    sums = onehot.T @ z  # (K, D)
    counts = onehot.sum(0)  # (K,)
    own = sums[y] - z  # (B, D): own class without the sample
    cents = sums.unsqueeze(0).expand(len(z), -1, -1).clone()  # (B, K, D)
    cents[torch.arange(len(z)), y] = own
    n = counts.unsqueeze(0).expand(len(z), -1).clone()
    n[torch.arange(len(z)), y] -= 1
    sim = torch.einsum("bd,bkd->bk", z, F.normalize(cents, dim=2))
    return sim.masked_fill(n <= 0, -2.0)


def head_only_cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of `model.head` on frozen features: the extractor runs in eval mode (BN statistics
    are not updated) and without autograd, so only the head can change."""
    model.features.eval()
    with torch.no_grad():
        f = model.features(x)
    logits = model.head(f)
    return F.cross_entropy(logits, y), logits
