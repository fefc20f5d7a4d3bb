"""Translation equivariance: does a layer commute with shifting its input?"""

import torch
from torch import nn


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`x` (..., H, W) moved down by `dy` and right by `dx` pixels (negative: up/left); what moves in is zero."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


@torch.no_grad()
def equivariance_error(layer: nn.Module, x: torch.Tensor, s: int, stride: int, margin: int) -> float:
    """How far `layer(shift(x, s, s))` is from the layer's own output shifted to match, away from the borders.

    The output is compared with `shift(layer(x), s / stride)` when the stride divides `s` (an exact output
    shift exists), else with the best of the integer output shifts around it: a strided layer has no output
    shift that matches, which is what this measures. The error is max |difference| / max |layer(x)| over the
    output positions at least `margin` (output pixels) from every border, so zero padding does not count."""
    ref, moved = layer(x), layer(shift(x, s, s))
    h, w = ref.shape[-2:]
    m = margin + -(-s // stride)
    if h <= 2 * m or w <= 2 * m:
        raise ValueError(f"output {h}x{w} has no interior {m} pixels away from its borders")
    inner = (..., slice(m, h - m), slice(m, w - m))
    scale = ref[inner].abs().max().clamp_min(1e-12)
    candidates = [s // stride] if s % stride == 0 else [s // stride, s // stride + 1]
    errs = [(moved - shift(ref, t, t))[inner].abs().max() / scale for t in candidates]
    return float(min(errs))
