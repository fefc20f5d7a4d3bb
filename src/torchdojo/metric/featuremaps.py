"""Feature maps of the main conv layers for fixed inputs, captured at chosen epochs (MISSION E1d, E2d):
one grid per layer, rows = (epoch, input), first column the input, then each channel min-max normalised.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo.report.figures import _plt, _save


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


def _normalise(m: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] per map (H, W); a constant (dead) map becomes 0."""
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def montage(
    snapshots: dict[int, dict[str, torch.Tensor]], inputs: torch.Tensor, layer: str, pad: int = 2
) -> torch.Tensor:
    """One RGB image (H', W', 3) in [0, 1]: rows (epoch, input), columns [input | ch 0 | ch 1 | ...],
    every cell resized (nearest) to the input size and every channel normalised on its own."""
    size = inputs.shape[-2:]
    epochs = sorted(snapshots)
    ncols = 1 + max(snapshots[e][layer].shape[1] for e in epochs)
    nrows = len(epochs) * len(inputs)
    h, w = size[0] + pad, size[1] + pad
    out = torch.ones(nrows * h + pad, ncols * w + pad, 3)
    for r, (e, i) in enumerate((e, i) for e in epochs for i in range(len(inputs))):
        img = inputs[i].float() / 255 if inputs.dtype == torch.uint8 else _normalise(inputs[i].float())
        cells = [img.expand(3, -1, -1)]
        maps = F.interpolate(snapshots[e][layer][i : i + 1].float(), size=size, mode="nearest")[0]
        cells += [_normalise(m).expand(3, -1, -1) for m in maps]
        for c, cell in enumerate(cells):
            out[pad + r * h : pad + r * h + size[0], pad + c * w : pad + c * w + size[1]] = cell.permute(1, 2, 0)
    return out


def grid(
    snapshots: dict[int, dict[str, torch.Tensor]],
    inputs: torch.Tensor,
    input_names: list[str],
    layer: str,
    path: Path,
    title: str = "",
) -> Path:
    """One layer's maps over epochs as one labelled montage (a single image: fast to draw at any size)."""
    img = montage(snapshots, inputs, layer)
    epochs = sorted(snapshots)
    n, ch = len(inputs), snapshots[epochs[0]][layer].shape[1]
    cell_h, cell_w = inputs.shape[-2] + 2, inputs.shape[-1] + 2
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * (ch + 1), 0.4 + 0.75 * len(epochs) * n))
    ax.imshow(img.numpy(), interpolation="nearest")
    ax.set_xticks(
        [2 + cell_w * c + cell_w / 2 for c in range(ch + 1)],
        ["input"] + [f"ch {c}" for c in range(ch)],
        fontsize=7,
    )
    ax.xaxis.tick_top()
    ax.set_yticks(
        [2 + cell_h * r + cell_h / 2 for r in range(len(epochs) * n)],
        [f"epoch {e} · {input_names[i]}" for e in epochs for i in range(n)],
        fontsize=7,
    )
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, pad=14)
    return _save(fig, path)
