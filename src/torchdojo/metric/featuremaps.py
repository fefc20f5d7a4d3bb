"""Feature maps of the main conv layers for fixed inputs, captured at chosen epochs (MISSION E1d, E2d):
one grid per layer, rows = (epoch, input), first column the input, then each channel min-max normalised.
"""

from pathlib import Path

import torch
from torch import nn

from torchdojo.report import figures


@torch.no_grad()
def capture(
    model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module], channels: int = 8
) -> dict[str, torch.Tensor]:
    """Outputs (N, channels, H, W) of each of `layers` for the normalised inputs `x`, on the CPU."""
    was = model.training
    model.eval()
    maps: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, name=name: maps.__setitem__(name, o[:, :channels].cpu()))
        for name, m in layers.items()
    ]
    try:
        model.features(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {k: v for k, v in maps.items() if v.ndim == 4}


def grid(
    snapshots: dict[int, dict[str, torch.Tensor]],
    inputs: torch.Tensor,
    input_names: list[str],
    layer: str,
    path: Path,
    title: str = "",
) -> Path:
    """One layer's maps over epochs: rows (epoch, input), columns [input | channel 0 | channel 1 | ...]."""
    images, labels = [], []
    epochs = sorted(snapshots)
    ncols = 1 + max(snapshots[e][layer].shape[1] for e in epochs)
    for e in epochs:
        maps = snapshots[e][layer]  # (N, ch, H, W)
        for i in range(len(inputs)):
            row = [inputs[i]] + [maps[i, c : c + 1] for c in range(maps.shape[1])]
            images += row + [torch.zeros(1, 1, 1)] * (ncols - len(row))
            labels.append(f"epoch {e}\n{input_names[i]}")
    titles = ["input"] + [f"ch {c}" for c in range(ncols - 1)] + [""] * (len(images) - ncols)
    return figures.image_grid(
        images, path, ncols=ncols, titles=titles, row_labels=labels, title=title, cell=1.0
    )
