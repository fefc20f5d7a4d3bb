"""2-D views of embeddings: PCA (always) and t-SNE (when scikit-learn is present), drawn by class."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from torchdojo.report.figures import _plt, _save


def pca_2d(emb: torch.Tensor) -> tuple[np.ndarray, float]:
    """The first two principal components (N, 2) and the share of variance they explain."""
    x = emb.double() - emb.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    var = s.pow(2)
    share = float(var[:2].sum() / var.sum().clamp_min(1e-12))
    return (x @ vh[:2].T).numpy(), share


def tsne_2d(emb: torch.Tensor, seed: int = 0) -> np.ndarray | None:
    """t-SNE (N, 2) of the embeddings, or None without scikit-learn."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    perplexity = float(min(30, max(2, (len(emb) - 1) // 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb.double().numpy())


def scatter(
    views: dict[str, np.ndarray], labels: torch.Tensor, classes: Sequence[str], path: Path, title: str = ""
) -> Path:
    """One panel per named 2-D view, points coloured by class."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(views), figsize=(4.6 * len(views), 4.2), squeeze=False)
    y = labels.numpy()
    for ax, (name, xy) in zip(axes[0], views.items(), strict=True):
        for c, cname in enumerate(classes):
            sel = y == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.6, label=cname)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
