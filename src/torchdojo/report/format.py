"""How a report shows a number and a column name: accuracies as percentages, durations in seconds, big integers
with thousands separators, other floats to 4 significant digits, and snake_case keys as words.

The kind of a value is read from its column's name (`test_acc` -> a percentage), or, in a two-column table of
names and values, from its row's name (`seconds per epoch` -> seconds). Only the page changes: report.json and
summary.json keep the raw numbers.
"""

import re
from typing import Any

SIGNIFICANT = 4

# Whole keys with a better name than their words; anything else: `_` -> ' ', words mapped by WORDS.
HEADERS = {
    "acc": "accuracy",
    "test_acc": "test accuracy",
    "val_acc": "validation accuracy",
    "train_acc": "train accuracy",
    "test_loss": "test loss",
    "val_loss": "validation loss",
    "train_loss": "train loss",
    "best_epoch": "best epoch",
    "s_per_epoch": "seconds per epoch",
    "eval_s": "evaluation (s)",
    "train_seconds": "training (s)",
    "seconds": "seconds",
    "lr": "learning rate",
    "params": "parameters",
    "trainable": "trainable parameters",
    "max_batches": "max batches",
    "majority_acc": "majority-class accuracy",
    "knn_test_acc": "kNN test accuracy",
}
WORDS = {
    "acc": "accuracy",
    "val": "validation",
    "lr": "learning rate",
    "params": "parameters",
    "knn": "kNN",
    "mse": "MSE",
    "pct": "%",
}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+|[a-z]+")


def readable(key: Any) -> str:
    """A column or row name as words: `test_acc` -> 'test accuracy', `s_per_epoch` -> 'seconds per epoch'.

    Only snake_case identifiers are rewritten (a run label like `efficientnet_lite0:frozen` or a formula like
    `||h|| at k=0` is shown as it is)."""
    text = str(key)
    if text in HEADERS:
        return HEADERS[text]
    if not SNAKE.fullmatch(text) or "_" not in text:
        return text
    words = text.split("_")
    shown = [WORDS.get(w, w) for w in words]
    if words[0] in ("n", "num"):  # n_images -> number of images
        shown[0] = "number of"
    if words[-1] == "s":
        shown[-1] = "(s)"
    return " ".join(shown)


def kind_of(name: Any) -> str:
    """What a column (or row) named `name` holds: 'percent' (a word 'acc' or 'accuracy': `test_acc`, 'kNN test
    acc'), 'seconds' (`eval_s`, `s_per_epoch`, 'train seconds', 'evaluation (s)') or 'number' (no unit)."""
    text = re.sub(r"[ .]", "_", str(name).strip().lower())
    if re.search(r"(^|_)(acc|accuracy)(_|$)", text):
        return "percent"
    if re.search(r"(^|_)(sec|secs|seconds)(_|$)|_s$|^s_per_|_s_per_|\(s\)$", text):
        return "seconds"
    return "number"


def _significant(v: float) -> str:
    """A float to SIGNIFICANT digits: thousands separators from 1e4 to 1e9, else Python's `g`."""
    a = abs(v)
    if a == 0:
        return "0"
    if 1e4 <= a < 1e9:
        return f"{float(f'{v:.{SIGNIFICANT}g}'):,.0f}"
    if 1e-3 <= a < 1e4:
        text = f"{float(f'{v:.{SIGNIFICANT}g}'):f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{v:.{SIGNIFICANT}g}"


def _percent(v: float) -> str:
    p = 100 * v
    if 99.95 <= p < 100:  # never round a near-perfect score up to 100%
        return f"{p:.2f}%"
    return f"{p:.1f}%"


def _seconds(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f} s"
    return f"{_significant(float(f'{v:.3g}'))} s"


def format_value(v: Any, kind: str = "number") -> str:
    """`v` as the page shows it. A percentage is only shown as one for a float in [0, 1] (an accuracy already in
    percent, or a count, stays a number); bools and strings are shown as they are."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if v != v:
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    if kind == "percent" and 0 <= v <= 1:
        return _percent(v)
    if kind == "seconds":
        return _seconds(v)
    return _significant(v)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def cell_kinds(columns: list[Any], rows: list[list[Any]]) -> list[list[str]]:
    """The kind of every cell: its column's, else (a column without one) its row's, when the row starts with a
    name ('seconds per epoch' | 0.31 -> seconds)."""
    col_kinds = [kind_of(c) for c in columns]
    out = []
    for row in rows:
        row_kind = kind_of(row[0]) if row and isinstance(row[0], str) else "number"
        out.append(
            [k if k != "number" else row_kind for k in col_kinds[: len(row)]] + ["number"] * (len(row) - len(col_kinds))
        )
    return out
