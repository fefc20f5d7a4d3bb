"""Figures as PNG files: training curves, labelled image grids, confusion matrices, bar charts."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)
    return path


def curves(
    histories: dict[str, list[dict[str, Any]]], path: Path, keys: Sequence[str] = ("loss", "acc"), title: str = ""
) -> Path:
    """One panel per key (loss, acc); train solid and val dashed, one colour per run/rung."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys, strict=True):
        for i, (name, rows) in enumerate(histories.items()):
            c = colors[i % len(colors)]
            ep = [r["epoch"] for r in rows]
            if rows and f"train_{key}" in rows[0]:
                ax.plot(ep, [r[f"train_{key}"] for r in rows], "-o", ms=3, color=c, label=f"{name} train")
            if rows and f"val_{key}" in rows[0]:
                ax.plot(ep, [r[f"val_{key}"] for r in rows], "--s", ms=3, color=c, label=f"{name} val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _to_img(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8/float tensor -> HxW or HxWx3 array for imshow."""
    x = x.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.float()
        x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    arr = x.numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def image_grid(
    images: Sequence[torch.Tensor],
    path: Path,
    ncols: int,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str = "",
    cell: float = 1.3,
) -> Path:
    """Images in a grid; optional per-image titles and per-row labels (e.g. class names)."""
    plt = _plt()
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell * ncols + (1.6 if row_labels else 0), cell * nrows), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i < len(images):
            img = _to_img(images[i])
            ax.imshow(
                img,
                cmap="gray" if img.ndim == 2 else None,
                vmin=0 if img.dtype == np.uint8 else None,
                vmax=255 if img.dtype == np.uint8 else None,
            )
            if titles:
                ax.set_title(titles[i], fontsize=7)
        if row_labels and i % ncols == 0 and i // ncols < len(row_labels):
            ax.set_ylabel(row_labels[i // ncols], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Counts with row-normalised colour; rows are true classes, columns predictions."""
    plt = _plt()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(0.55 * k + 2.5, 0.55 * k + 2))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def bars(values: dict[str, float], path: Path, ylabel: str, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(values) + 2, 3.5))
    ax.bar(list(values), list(values.values()), color="#3b6ea5")
    for i, v in enumerate(values.values()):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Path:
    """Several named (x, y) lines on one axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
