"""Our own implementations of the targets whose contract no existing torchdojo class has exactly.

`Conv2dBackward` is A2's contract (an autograd.Function `apply(x, weight, bias, stride, padding)` with scalar
stride and padding) over the from-scratch convolution of `torchdojo.nn.conv`: its backward is the hand-
written one (dL/dX by correlating the dilated, padded output gradient with the flipped kernel; dL/dK from the
saved windows). The other targets' references are existing classes: torchdojo.nn.conv:Conv2d,
torchdojo.nn.conv_transpose:ConvTranspose2d, torchdojo.nn.ste:Binarize, torchdojo.nn.elman:ElmanCell,
torchdojo.rnn.cells:ResetGateCell and torchdojo.rnn.cells:LipschitzCell.
"""

import torch

from torchdojo.nn.conv import Conv2dFunction, pair


class Conv2dBackward(torch.autograd.Function):
    """forward(ctx, x, weight, bias, stride: int, padding: int) -> y; backward(ctx, gy) -> (dx, dweight, dbias)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):  # noqa: ANN001, ANN205
        return Conv2dFunction.forward(
            ctx, x, weight, bias, pair(stride, "stride"), pair(padding, "padding", 0), (1, 1), 1
        )

    @staticmethod
    def backward(ctx, gy):  # noqa: ANN001, ANN205
        gx, gw, gb, *_ = Conv2dFunction.backward(ctx, gy)
        return gx, gw, gb, None, None
