"""Random search over few or many hyper-parameters with the same budget of trials."""

import math
import random
from typing import Any

# knob -> how to draw it; "few" tunes the learning rate only, "many" eight knobs at once
SPACES: dict[str, dict[str, tuple[str, Any]]] = {
    "few": {"lr": ("log", (1e-4, 1e-1))},
    "many": {
        "lr": ("log", (1e-4, 1e-1)),
        "weight_decay": ("log", (1e-6, 1e-1)),
        "batch_size": ("choice", (32, 64, 128, 256)),
        "optimizer": ("choice", ("sgd", "adam", "adamw")),
        "momentum": ("uniform", (0.5, 0.99)),
        "schedule": ("choice", ("none", "cosine")),
        "width": ("choice", (32, 128, 512)),
        "dropout": ("uniform", (0.0, 0.5)),
    },
}
MODEL_KNOBS = ("width", "dropout")  # the rest are TrainConfig fields


def draw(space: dict[str, tuple[str, Any]], rng: random.Random, fixed: set[str]) -> dict[str, Any]:
    """One trial's knobs; knobs in `fixed` (the user set them) are not drawn."""
    trial: dict[str, Any] = {}
    for name, (kind, arg) in space.items():
        if name in fixed:
            continue
        if kind == "log":
            lo, hi = arg
            trial[name] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        elif kind == "uniform":
            trial[name] = float(rng.uniform(*arg))
        else:
            trial[name] = rng.choice(arg)
    return trial
