"""Measuring representations: embeddings and pooled layer features of a model, kNN accuracy, the
Fisher ratio and linear-probe accuracy of features (feature-map quality as a number, MISSION E3).
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchdojo.data.base import ImageData
from torchdojo.metric.triplets import to_input


@torch.no_grad()
def embed(
    model: nn.Module,
    data: ImageData,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device,
    layers: dict[str, nn.Module] | None = None,
    batch_size: int = 512,
    size: int | None = None,
    channels: int | None = None,
) -> dict[str, torch.Tensor]:
    """'embedding' (N, D) = model.features(x) in eval mode, and for each of `layers` its output
    globally average-pooled (N, C); all on the CPU."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"embedding": [], **{name: [] for name in layers or {}}}
    current: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, name=name: current.__setitem__(name, o))
        for name, m in (layers or {}).items()
    ]
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
    try:
        for i in range(0, len(data), batch_size):
            x = to_input(data.x[i : i + batch_size].to(device), m, s, size, channels)
            out["embedding"].append(model.features(x).float().cpu())
            for name in layers or {}:
                act = current[name]
                pooled = act.mean((2, 3)) if act.ndim == 4 else act.flatten(1)  # (B, C)
                out[name].append(pooled.float().cpu())
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in out.items()}


def knn_accuracy(
    ref: torch.Tensor, ref_y: torch.Tensor, query: torch.Tensor, query_y: torch.Tensor, k: int = 5
) -> float:
    """Accuracy of a k-nearest-neighbour vote (cosine similarity) of `query` rows against `ref` rows."""
    sim = F.normalize(query.float(), dim=1) @ F.normalize(ref.float(), dim=1).T  # (Q, R)
    k = min(k, len(ref))
    top_sim, top = sim.topk(k, dim=1)
    votes = torch.zeros(len(query), int(ref_y.max()) + 1)
    # one vote per neighbour, plus a tiny similarity-weighted share that only breaks ties
    votes.scatter_add_(1, ref_y[top], 1 + 1e-3 * top_sim)
    return (votes.argmax(1) == query_y).float().mean().item()


def fisher_ratio(feats: torch.Tensor, labels: torch.Tensor, shrink: float = 1e-3) -> float:
    """Fisher's criterion trace(Sw^-1 Sb) of features (N, C): between-class over within-class scatter,
    invariant to any invertible linear map of the features. Sw is shrunk by `shrink` * its mean
    eigenvalue, so dead or constant channels do not make it singular. 0 = no linear separation."""
    x = feats.double()
    mu = x.mean(0)
    d = x.shape[1]
    sw = torch.zeros(d, d, dtype=torch.float64)
    sb = torch.zeros(d, d, dtype=torch.float64)
    for c in labels.unique():
        xc = x[labels == c]
        mc = xc.mean(0)
        sw += (xc - mc).T @ (xc - mc) / len(x)
        sb += (len(xc) / len(x)) * torch.outer(mc - mu, mc - mu)
    scale = torch.trace(sw) / d
    if scale <= 0:  # every feature constant within each class
        return 0.0
    sw += shrink * scale * torch.eye(d, dtype=torch.float64)
    return float(torch.trace(torch.linalg.solve(sw, sb)))


def linear_probe_accuracy(
    train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor, seed: int = 0
) -> float:
    """Test accuracy of a logistic regression fitted on standardised `train` features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_y.unique()) < 2:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))
    clf.fit(train.numpy(), train_y.numpy())
    return float(np.mean(clf.predict(test.numpy()) == test_y.numpy()))


def mean_pairwise_distance(emb: torch.Tensor, max_rows: int = 1024) -> float:
    """Mean Euclidean distance between distinct L2-normalised rows (0 = collapsed to a point;
    random directions in many dimensions give about sqrt(2))."""
    z = F.normalize(emb[:max_rows].detach().float(), dim=1)
    n = len(z)
    if n < 2:
        return 0.0
    d = torch.cdist(z, z)
    return float(d.sum() / (n * (n - 1)))
