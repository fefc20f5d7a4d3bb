"""Interpreting any classifier's test predictions (MISSION D2): the most confident mistakes, the confusion
matrix, per-class accuracy and the most-confused class pairs, plus one call that puts them in a report.

All functions take `probs` (N, K) class probabilities and `targets` (N,) true labels.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from torchdojo.report import Report, figures
from torchdojo.runs import Run


@dataclasses.dataclass(frozen=True)
class Mistake:
    """One wrong prediction: example index, predicted and true class, and the probability of each."""

    index: int
    predicted: int
    true: int
    p_predicted: float
    p_true: float


def most_confident_mistakes(probs: torch.Tensor, targets: torch.Tensor, k: int = 10) -> list[Mistake]:
    """The k wrong predictions with the highest predicted probability, most confident first (ties: lower index)."""
    conf, pred = probs.max(1)
    wrong = torch.nonzero(pred != targets).flatten()
    # stable sort on -confidence keeps index order among equal confidences
    order = wrong[torch.sort(-conf[wrong], stable=True).indices][:k]
    return [Mistake(int(i), int(pred[i]), int(targets[i]), float(conf[i]), float(probs[i, targets[i]])) for i in order]


def confusion(probs: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> np.ndarray:
    """(K, K) counts: rows are true classes, columns predicted classes."""
    k = num_classes or probs.shape[1]
    cm = torch.zeros(k, k, dtype=torch.long)
    cm.index_put_((targets.long(), probs.argmax(1)), torch.ones(len(targets), dtype=torch.long), accumulate=True)
    return cm.numpy()


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each true class (diagonal / row sum); NaN for a class with no examples."""
    rows = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(cm) / np.maximum(rows, 1), np.nan)


def most_confused_pairs(cm: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal counts as (true, predicted, count), largest first, zero counts dropped."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [(int(i // cm.shape[1]), int(i % cm.shape[1])) for i in flat]
    return [(t, p, int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def draw_mistakes(
    mistakes: Sequence[Mistake], images: torch.Tensor, classes: Sequence[str], path: Any, title: str = ""
) -> Any:
    """A grid of the mistaken images titled 'pred CLASS p' / 'true CLASS p'."""
    imgs = [images[m.index] for m in mistakes]
    titles = [
        f"pred {classes[m.predicted]} {m.p_predicted:.2f}\ntrue {classes[m.true]} {m.p_true:.2f}" for m in mistakes
    ]
    return figures.image_grid(imgs, path, ncols=min(5, max(len(imgs), 1)), titles=titles, title=title, cell=1.9)


def report_interpretation(
    report: Report,
    run: Run,
    name: str,
    probs: torch.Tensor,
    targets: torch.Tensor,
    images: torch.Tensor,
    classes: Sequence[str],
    k: int = 10,
) -> dict[str, Any]:
    """Add mistakes, confusion matrix, per-class accuracy and confused pairs for `name` to the report."""
    mistakes = most_confident_mistakes(probs, targets, k)
    cm = confusion(probs, targets, len(classes))
    acc = per_class_accuracy(cm)
    pairs = most_confused_pairs(cm, 5)
    safe = name.replace(":", "_").replace("/", "_")
    report.heading(f"{name}: interpretation", level=3)
    if mistakes:
        draw_mistakes(
            mistakes,
            images,
            classes,
            run.figure_path(f"mistakes_{safe}"),
            title=f"{name}: the {len(mistakes)} most confident mistakes",
        )
        report.figure(
            f"mistakes_{safe}.png",
            f"{name}: the {len(mistakes)} most confident mistakes on the test "
            "set (highest predicted probability, wrong class), with predicted and true class and the "
            "model's probability for each",
        )
        report.table(
            [
                {
                    "rank": r + 1,
                    "test image": m.index,
                    "predicted": classes[m.predicted],
                    "p(predicted)": m.p_predicted,
                    "true": classes[m.true],
                    "p(true)": m.p_true,
                }
                for r, m in enumerate(mistakes)
            ],
            caption=f"{name}: most confident mistakes",
        )
    else:
        report.text(f"{name} made no mistakes on the test set.")
    figures.confusion_matrix(cm, list(classes), run.figure_path(f"cm_{safe}"), title=f"{name}: test confusion")
    report.figure(f"cm_{safe}.png", f"{name}: confusion matrix on the test set (rows true, columns predicted)")
    if len(classes) <= 20:
        report.table(
            [
                {"class": c, "accuracy": float(a), "images": int(cm[i].sum())}
                for i, (c, a) in enumerate(zip(classes, acc, strict=True))
            ],
            caption=f"{name}: per-class test accuracy",
        )
    else:  # many classes (Flowers-102): the worst ten are what one reads
        worst = np.argsort(np.nan_to_num(acc, nan=2.0), kind="stable")[:10]
        report.table(
            [{"class": classes[i], "accuracy": float(acc[i]), "images": int(cm[i].sum())} for i in worst],
            caption=f"{name}: the ten classes with the lowest test accuracy",
        )
    if pairs:
        report.table(
            [{"true": classes[t], "predicted as": classes[p], "count": c} for t, p, c in pairs],
            caption=f"{name}: most-confused pairs",
        )
    return {
        "mistakes": [dataclasses.asdict(m) for m in mistakes],
        "worst_class": classes[int(np.nanargmin(acc))] if np.isfinite(acc).any() else None,
    }
