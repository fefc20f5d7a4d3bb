"""Interpretation on hand-made predictions: the most-confident-mistakes ranking, confusion matrix, per-class
accuracy, most-confused pairs, and the report section with its figures."""

import numpy as np
import torch

from torchdojo.interpret import (
    Mistake,
    confusion,
    most_confident_mistakes,
    most_confused_pairs,
    per_class_accuracy,
    report_interpretation,
)
from torchdojo.report import Report
from torchdojo.runs import Run

# 6 examples, 3 classes. Wrong: #1 (p=0.9 for class 2), #3 (0.6 for 0), #4 (0.7 for 1), #5 (0.7 for 1).
PROBS = torch.tensor(
    [
        [0.80, 0.10, 0.10],  # true 0, right
        [0.05, 0.05, 0.90],  # true 0, wrong -> 2 at 0.90
        [0.10, 0.85, 0.05],  # true 1, right
        [0.60, 0.30, 0.10],  # true 1, wrong -> 0 at 0.60
        [0.20, 0.70, 0.10],  # true 2, wrong -> 1 at 0.70
        [0.10, 0.70, 0.20],  # true 2, wrong -> 1 at 0.70 (tie with #4: lower index first)
    ]
)
TARGETS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_most_confident_mistakes_ranking():
    got = most_confident_mistakes(PROBS, TARGETS, k=10)
    assert [m.index for m in got] == [1, 4, 5, 3]
    assert got[0] == Mistake(index=1, predicted=2, true=0, p_predicted=PROBS[1, 2].item(), p_true=PROBS[1, 0].item())
    assert got[3].predicted == 0 and got[3].true == 1 and abs(got[3].p_true - 0.3) < 1e-6
    assert [m.index for m in most_confident_mistakes(PROBS, TARGETS, k=2)] == [1, 4]
    assert most_confident_mistakes(PROBS, PROBS.argmax(1), k=5) == []  # no mistakes, nothing listed


def test_confusion_per_class_and_pairs():
    cm = confusion(PROBS, TARGETS)
    np.testing.assert_array_equal(cm, [[1, 0, 1], [1, 1, 0], [0, 2, 0]])
    np.testing.assert_allclose(per_class_accuracy(cm), [0.5, 0.5, 0.0])
    assert most_confused_pairs(cm, k=2) == [(2, 1, 2), (0, 2, 1)]
    assert all(c > 0 for *_, c in most_confused_pairs(cm, k=20))  # zero counts are not "confusions"
    assert np.isnan(per_class_accuracy(np.array([[1, 0], [0, 0]]))[1])


def test_report_interpretation_writes_figures_and_tables(tmp_path):
    run = Run(tmp_path / "run")
    report = Report("t")
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    out = report_interpretation(report, run, "toy:frozen", PROBS, TARGETS, images, ["a", "b", "c"], k=3)
    assert (run.path / "figures" / "mistakes_toy_frozen.png").is_file()
    assert (run.path / "figures" / "cm_toy_frozen.png").is_file()
    tables = [b for b in report.blocks if b["type"] == "table"]
    mistakes = next(t for t in tables if "mistakes" in t["caption"])
    assert [r[1] for r in mistakes["rows"]] == [1, 4, 5]  # the test-image column, in ranking order
    assert out["worst_class"] == "c" and len(out["mistakes"]) == 3
