"""A1/A2: 2-D convolution from plain tensor ops (no torch.nn maths) with a hand-written backward.

Forward: zero-pad by slice assignment, take every sliding window as a strided view of the padded
input (`as_strided`, no copy), and contract windows with the kernel in one matmul.
Backward (`Conv2dFunction.backward`), written out instead of left to autograd:
- dL/dX = the stride-dilated dL/dY, zero-padded for a "full" correlation with the kernel flipped 180°
  (in/out channels swapped), cropped back to the unpadded input;
- dL/dK = the padded input correlated with dL/dY;
- dL/db = dL/dY summed over batch and positions.
`torch.nn` is used only for the `Module`/`Parameter` containers, so `load_state_dict` swaps with `nn.Conv2d`.
"""

import math

import torch
from torch import nn

Pair = tuple[int, int]


def check_channels(in_channels: int, out_channels: int, groups: int) -> None:
    """Positive int channel counts and groups, both counts divisible by groups (as nn.Conv2d requires)."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible by groups ({groups})"
        )


def pair(value: int | tuple[int, int] | list[int], name: str, minimum: int = 1) -> Pair:
    """An int or a pair of ints -> (h, w), each >= minimum; anything else is a ValueError naming `name`."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {tuple(value)}")
    return int(value[0]), int(value[1])


def pad2d(x: torch.Tensor, ph: int, pw: int, extra_h: int = 0, extra_w: int = 0) -> torch.Tensor:
    """Zero-pad the last two dims: ph rows above, ph + extra_h below; pw columns left, pw + extra_w right."""
    if ph == pw == extra_h == extra_w == 0:
        return x
    *lead, h, w = x.shape
    out = x.new_zeros(*lead, h + 2 * ph + extra_h, w + 2 * pw + extra_w)
    out[..., ph : ph + h, pw : pw + w] = x
    return out


def windows(xp: torch.Tensor, kernel: Pair, stride: Pair, dilation: Pair) -> torch.Tensor:
    """Every kernel-sized window of a padded (B, C, H, W) input as a view (B, C, OH, OW, kh, kw); no copy."""
    xp = xp.contiguous()
    b, c, h, w = xp.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    s_b, s_c, s_h, s_w = xp.stride()
    # moving one output row jumps `sh` input rows; moving one kernel row jumps `dh` input rows
    return xp.as_strided(
        (b, c, oh, ow, kh, kw), (s_b, s_c, s_h * sh, s_w * sw, s_h * dh, s_w * dw), xp.storage_offset()
    )


def im2col(xp: torch.Tensor, kernel: Pair, stride: Pair, dilation: Pair, groups: int) -> torch.Tensor:
    """The windows laid out for a matmul: (B, G, C/G * kh * kw, OH * OW) (this is the one copy)."""
    win = windows(xp, kernel, stride, dilation)  # (B, C, OH, OW, kh, kw)
    b, c, oh, ow, kh, kw = win.shape
    return win.permute(0, 1, 4, 5, 2, 3).reshape(b, groups, c // groups * kh * kw, oh * ow)


def correlate(
    xp: torch.Tensor, weight: torch.Tensor, stride: Pair, dilation: Pair, groups: int, cols: torch.Tensor | None = None
) -> torch.Tensor:
    """Valid cross-correlation of an already padded (B, C, H, W) input with weight (O, C/G, kh, kw)."""
    o, cg, kh, kw = weight.shape
    b = xp.shape[0]
    if cols is None:
        cols = im2col(xp, (kh, kw), stride, dilation, groups)  # (B, G, C/G*kh*kw, L)
    oh = (xp.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (xp.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = weight.reshape(groups, o // groups, cg * kh * kw) @ cols  # (B, G, O/G, L): the single matmul
    return out.reshape(b, o, oh, ow)


def dilate(gy: torch.Tensor, stride: Pair) -> torch.Tensor:
    """Insert stride-1 zeros between neighbouring entries of (B, O, OH, OW): undoes the stride's skipping."""
    sh, sw = stride
    if sh == sw == 1:
        return gy
    b, o, oh, ow = gy.shape
    z = gy.new_zeros(b, o, (oh - 1) * sh + 1, (ow - 1) * sw + 1)
    z[:, :, ::sh, ::sw] = gy
    return z


def flip_kernel(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(O, C/G, kh, kw) -> (C, O/G, kh, kw): rotated 180° with in/out channels swapped within each group."""
    o, cg, kh, kw = weight.shape
    w = weight.reshape(groups, o // groups, cg, kh, kw).transpose(1, 2)  # (G, C/G, O/G, kh, kw)
    return w.reshape(groups * cg, o // groups, kh, kw).flip(2, 3)


def grad_input(
    gy: torch.Tensor,
    weight: torch.Tensor,
    input_shape: torch.Size,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
) -> torch.Tensor:
    """dL/dX: the stride-dilated dL/dY correlated in full with the flipped kernel, cropped to X."""
    _, _, h, w = input_shape
    _, _, kh, kw = weight.shape
    (ph, pw), (dh, dw) = padding, dilation
    z = dilate(gy, stride)  # (B, O, (OH-1)*sh+1, (OW-1)*sw+1)
    eh, ew = dh * (kh - 1), dw * (kw - 1)  # how far the dilated kernel reaches beyond its first tap
    # padded rows/columns that no window reached (the stride did not divide evenly) get zero gradient
    rest_h, rest_w = h + 2 * ph - (z.shape[2] + eh), w + 2 * pw - (z.shape[3] + ew)
    zp = pad2d(z, eh, ew, rest_h, rest_w)
    gxp = correlate(zp, flip_kernel(weight, groups), (1, 1), dilation, groups)  # (B, C, H+2ph, W+2pw)
    return gxp[:, :, ph : ph + h, pw : pw + w]


def grad_weight(cols: torch.Tensor, gy: torch.Tensor, weight_shape: torch.Size, groups: int) -> torch.Tensor:
    """dL/dK: the padded input's windows (`im2col`, (B, G, C/G*kh*kw, L)) correlated with dL/dY."""
    o, cg, kh, kw = weight_shape
    g = gy.reshape(gy.shape[0], groups, o // groups, -1)  # (B, G, O/G, L)
    # dK[o, k] = sum over batch b and output position l of dY[b, o, l] * window_l[b, k]
    gw = (g @ cols.transpose(-1, -2)).sum(0)  # (G, O/G, C/G*kh*kw)
    return gw.reshape(o, cg, kh, kw)


class Conv2dFunction(torch.autograd.Function):
    """conv2d with an explicit backward; inputs: x, weight, bias | None, stride, padding, dilation=1, groups=1.

    stride, padding and dilation are ints or (h, w) pairs, so `apply(x, weight, bias, stride, padding)` is
    A2's contract (`torchdojo check conv2d-backward torchdojo.nn.conv:Conv2dFunction` verifies it).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation=1, groups=1):  # noqa: ANN001, ANN205
        stride, padding = pair(stride, "stride"), pair(padding, "padding", minimum=0)
        dilation = pair(dilation, "dilation")
        xp = pad2d(x, *padding)
        cols = im2col(xp, weight.shape[2:], stride, dilation, groups)  # kept: dL/dK needs the same windows
        y = correlate(xp, weight, stride, dilation, groups, cols)
        if bias is not None:
            y.add_(bias.view(1, -1, 1, 1))  # y is a fresh matmul result: add in place, no extra copy
        ctx.save_for_backward(cols, weight)
        ctx.conf = (x.shape, stride, padding, dilation, groups, bias is not None)
        return y

    @staticmethod
    def backward(ctx, gy):  # noqa: ANN001, ANN205
        cols, weight = ctx.saved_tensors
        shape, stride, padding, dilation, groups, has_bias = ctx.conf
        gy = gy.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = grad_input(gy, weight, shape, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            gw = grad_weight(cols, gy, weight.shape, groups)
        if has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None, None


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Like `torch.nn.functional.conv2d` on (B, C, H, W), computed by `Conv2dFunction`."""
    return Conv2dFunction.apply(
        x, weight, bias, pair(stride, "stride"), pair(padding, "padding", 0), pair(dilation, "dilation"), groups
    )


class Conv2d(nn.Module):
    """A drop-in for `nn.Conv2d` (same weight/bias layout and init) computed without torch.nn."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        kernel_size: int | Pair = (1, 1),
        stride: int | Pair = 1,
        padding: int | Pair = 0,
        dilation: int | Pair = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        check_channels(in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, as nn.Conv2d (kaiming_uniform, a=√5)."""
        fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def output_size(self, h: int, w: int) -> Pair:
        """(OH, OW) for an (h, w) input: floor((size + 2p - d(k-1) - 1) / s) + 1."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError naming expected and actual values: wrong rank, channel count, or kernel too large."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"Conv2d expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (3, 4):
            raise ValueError(
                f"Conv2d expects a 4-D input (batch, channels, height, width) or 3-D (channels, "
                f"height, width), got {x.dim()}-D input of shape {tuple(x.shape)}"
            )
        c, h, w = x.shape[-3:]
        if c != self.in_channels:
            raise ValueError(
                f"Conv2d expects {self.in_channels} input channels, got {c} (input shape {tuple(x.shape)})"
            )
        (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
        eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        if eh > h + 2 * ph or ew > w + 2 * pw:
            raise ValueError(
                f"Conv2d kernel {eh}x{ew} (dilated extent) is larger than the padded input "
                f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph},{pw})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, O, OH, OW); a 3-D (C, H, W) input gives (O, OH, OW)."""
        self.check_input(x)
        unbatched = x.dim() == 3
        y = conv2d(
            x.unsqueeze(0) if unbatched else x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        """Same summary line as nn.Conv2d."""
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
