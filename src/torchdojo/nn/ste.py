"""A4: straight-through estimators: a non-differentiable forward (sign, round) with a surrogate gradient.

The true derivative of sign/round is zero almost everywhere, so backprop through them would stop.
The straight-through estimator passes the incoming gradient through unchanged (identity), or, in the
clipped variant, only where |x| <= 1: the derivative of hardtanh, the function sign approximates.
"""

import torch
from torch import nn


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, clip):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        ctx.clip = clip
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)  # sign with sign(0) = +1: always binary

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        if ctx.clip:
            g = g * (x.abs() <= 1).to(g.dtype)  # d hardtanh / dx
        return g, None


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, clip):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        ctx.clip = clip
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        if ctx.clip:
            g = g * (x.abs() <= 1).to(g.dtype)
        return g, None


def sign_ste(x: torch.Tensor, clip: bool = False) -> torch.Tensor:
    """±1 forward (0 -> +1); backward passes the gradient through (only where |x| <= 1 if `clip`)."""
    return _SignSTE.apply(x, clip)


def round_ste(x: torch.Tensor, clip: bool = False) -> torch.Tensor:
    """Round to the nearest integer forward; identity gradient backward (only where |x| <= 1 if `clip`)."""
    return _RoundSTE.apply(x, clip)


class Binarize(nn.Module):
    """An activation layer: sign(x) with a straight-through gradient (hard-tanh clipped when `clip`)."""

    def __init__(self, clip: bool = True):
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(...) -> (...) in {-1, +1}."""
        return sign_ste(x, self.clip)

    def extra_repr(self) -> str:
        """clip=True/False."""
        return f"clip={self.clip}"
