"""A3: transposed convolution by hand, as a scatter-add of kernel copies.

Every input element x[h, w] stamps a copy of the kernel, scaled by its value, into the output with its
top-left corner at (h * stride, w * stride); overlapping stamps add up. `padding` then removes that many
rows/columns from each border of the result and `output_padding` adds rows/columns at the bottom/right.
Gradients come from autograd through the einsum and `index_add_`; `torch.nn` holds only the parameters.
"""

import math

import torch
from torch import nn

from torchdojo.nn.conv import Pair, check_channels, pair


def output_size(size: Pair, kernel: Pair, stride: Pair, padding: Pair, output_padding: Pair, dilation: Pair) -> Pair:
    """(OH, OW) = (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1."""
    dims = zip(size, kernel, stride, padding, output_padding, dilation, strict=True)
    return tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, op, d in dims)  # type: ignore[return-value]


def stamps(x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Input element times kernel: x (B, C, H, W), weight (C, O/G, kh, kw) -> (B, O, H, W, kh, kw)."""
    b, c, h, w = x.shape
    _, og, kh, kw = weight.shape
    xg = x.reshape(b, groups, c // groups, h, w)
    wg = weight.reshape(groups, c // groups, og, kh, kw)
    out = torch.einsum("bgchw,gcoij->bgohwij", xg, wg)  # summed over the input channels of each group
    return out.reshape(b, groups * og, h, w, kh, kw)


def conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    output_padding: int | Pair = 0,
    groups: int = 1,
    dilation: int | Pair = 1,
) -> torch.Tensor:
    """Like `torch.nn.functional.conv_transpose2d` on (B, C, H, W), computed as a scatter-add of stamps."""
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding", 0)
    (oph, opw), (dh, dw) = pair(output_padding, "output_padding", 0), pair(dilation, "dilation")
    b, _, h, w = x.shape
    _, og, kh, kw = weight.shape
    # the full, uncropped output: the last stamp ends at (h-1)*s + d*(k-1); output_padding extends it
    fh, fw = (h - 1) * sh + dh * (kh - 1) + 1 + oph, (w - 1) * sw + dw * (kw - 1) + 1 + opw
    out_h, out_w = fh - 2 * ph, fw - 2 * pw
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"conv_transpose2d output would be {out_h}x{out_w}: padding {ph},{pw} crops more "
            f"than the {fh}x{fw} result of a {h}x{w} input"
        )
    s = stamps(x, weight, groups)  # (B, O, H, W, kh, kw)
    # where stamp entry (h, w, i, j) lands: row h*sh + i*dh, column w*sw + j*dw of the full output
    dev = x.device
    rows = (torch.arange(h, device=dev) * sh)[:, None] + (torch.arange(kh, device=dev) * dh)[None, :]
    cols = (torch.arange(w, device=dev) * sw)[:, None] + (torch.arange(kw, device=dev) * dw)[None, :]
    target = rows[:, None, :, None] * fw + cols[None, :, None, :]  # (H, W, kh, kw) flat indices
    full = x.new_zeros(b, groups * og, fh * fw)
    full = full.index_add(2, target.reshape(-1), s.reshape(b, groups * og, -1))  # overlapping stamps add up
    out = full.reshape(b, groups * og, fh, fw)[:, :, ph : ph + out_h, pw : pw + out_w]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class ConvTranspose2d(nn.Module):
    """A drop-in for `nn.ConvTranspose2d` (same constructor, weight layout (C, O/G, kh, kw) and init)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        kernel_size: int | Pair = (1, 1),
        stride: int | Pair = 1,
        padding: int | Pair = 0,
        output_padding: int | Pair = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | Pair = 1,
    ):
        super().__init__()
        check_channels(in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding", 0)
        self.output_padding = pair(output_padding, "output_padding", 0)
        self.dilation = pair(dilation, "dilation")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation, strict=True):
            if op >= max(s, d):
                raise ValueError(
                    f"output_padding must be smaller than stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation}"
                )
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = O/G * kh * kw, as nn.ConvTranspose2d."""
        bound = 1.0 / math.sqrt(self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1])
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, O, OH, OW); a 3-D (C, H, W) input gives (O, OH, OW)."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
            got = f"{x.dim()}-D input {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"ConvTranspose2d expects a 4-D input (batch, channels, height, width) or 3-D "
                f"(channels, height, width), got {got}"
            )
        if x.shape[-3] != self.in_channels:
            raise ValueError(
                f"ConvTranspose2d expects {self.in_channels} input channels, got {x.shape[-3]} "
                f"(input shape {tuple(x.shape)})"
            )
        unbatched = x.dim() == 3
        y = conv_transpose2d(
            x.unsqueeze(0) if unbatched else x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        """Same summary line as nn.ConvTranspose2d."""
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
