"""Mirrored autoencoders (MISSION G1-G2): decoder layer i is built as the inverse of encoder layer L+1-i.

Encoder layer i computes h_i = pool(act(A_i h_{i-1} + b_i)), A_i a Linear or a Conv2d. Its mirror computes
h_{i-1} ~ B_i act^{-1}(unpool(h_i)) + c_i, with B_i a Linear or a ConvTranspose2d of the same geometry, so that
B_i = pinv(A_i), c_i = -pinv(A_i) b_i inverts the layer exactly wherever A_i has full column rank, act is
invertible (LeakyReLU) and there is no pooling. `output_padding` makes every ConvTranspose2d produce exactly the
shape its mirror Conv2d consumed.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo.errors import DojoError

ACTIVATIONS = ("leaky", "relu", "identity")


class Activation(nn.Module):
    """An elementwise activation with a (right-)inverse: LeakyReLU (exact), ReLU (identity on y >= 0)."""

    def __init__(self, name: str = "leaky", slope: float = 0.2):
        super().__init__()
        if name not in ACTIVATIONS:
            raise DojoError(f"unknown activation {name!r}", f"use one of {', '.join(ACTIVATIONS)}")
        if name == "leaky" and not 0 < slope < 1:
            raise DojoError(f"LeakyReLU slope must be in (0, 1) to be invertible, got {slope}")
        self.name, self.slope = name, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "leaky":
            return F.leaky_relu(x, self.slope)
        return F.relu(x) if self.name == "relu" else x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """act^{-1}(y); ReLU has none, so its outputs (all >= 0) pass unchanged: the negatives are lost."""
        if self.name == "leaky":
            return torch.where(y >= 0, y, y / self.slope)
        return y


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size after a Conv2d: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_output_padding(size: int, kernel: int, stride: int, padding: int) -> int:
    """The ConvTranspose2d `output_padding` that maps conv_out_size(size) back to exactly `size`.

    A stride-s conv maps s consecutive input sizes to the same output size; the transposed conv
    gives (out - 1) s - 2p + k, and the remainder r = (size + 2p - k) mod s (always in [0, s-1],
    as PyTorch requires) says which of those s sizes it was.
    """
    out = conv_out_size(size, kernel, stride, padding)
    return size - ((out - 1) * stride - 2 * padding + kernel)


class EncoderLayer(nn.Module):
    """h -> pool(act(A h + b)); A is a Linear ("fc") or a Conv2d ("conv")."""

    def __init__(
        self,
        kind: str,
        in_shape: Sequence[int],
        out: int,
        act: Activation,
        kernel: int = 3,
        stride: int = 1,
        padding: int = 1,
        pool: int = 0,
    ):
        super().__init__()
        self.kind, self.in_shape, self.act, self.pool = kind, tuple(in_shape), act, pool
        self.kernel, self.stride, self.padding = kernel, stride, padding
        if kind == "fc":
            if pool:
                raise DojoError("pooling needs a conv layer", "set pool=0 for fully connected layers")
            self.op: nn.Module = nn.Linear(self.in_shape[0], out)
            self.pre_pool_shape: tuple[int, ...] = (out,)
            self.output_padding = (0, 0)
        elif kind == "conv":
            c, h, w = self.in_shape
            oh, ow = (conv_out_size(s, kernel, stride, padding) for s in (h, w))
            if oh < 1 or ow < 1:
                raise DojoError(
                    f"a {kernel}x{kernel} stride-{stride} conv does not fit a {h}x{w} input",
                    "use fewer layers, a smaller stride or more padding",
                )
            self.op = nn.Conv2d(c, out, kernel, stride, padding)
            self.pre_pool_shape = (out, oh, ow)
            self.output_padding = (
                conv_output_padding(h, kernel, stride, padding),
                conv_output_padding(w, kernel, stride, padding),
            )
        else:
            raise DojoError(f"unknown layer kind {kind!r}", "use fc or conv")
        if pool:  # ceil_mode keeps odd sizes (7 -> 4) so that the mirror can upsample back to the exact size
            _, ph, pw = self.pre_pool_shape
            self.out_shape = (out, math.ceil(ph / pool), math.ceil(pw / pool))
        else:
            self.out_shape = self.pre_pool_shape

    @property
    def weight(self) -> torch.Tensor:
        return self.op.weight

    @property
    def bias(self) -> torch.Tensor:
        return self.op.bias

    def linear(self, h: torch.Tensor) -> torch.Tensor:
        """A h + b, before the activation."""
        return self.op(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.act(self.op(h))
        return F.max_pool2d(z, self.pool, ceil_mode=True) if self.pool else z


class DecoderLayer(nn.Module):
    """z -> B act^{-1}(unpool(z)) + c: the mirror of one EncoderLayer (B = Linear or ConvTranspose2d).

    With `tied`, B is the adjoint of the encoder's A (A^T for a Linear, the same kernel for a conv), so the
    layer owns only its bias; the autoencoder passes the weight in.
    """

    def __init__(self, enc: EncoderLayer, tied: bool = False):
        super().__init__()
        self.kind, self.act, self.tied = enc.kind, enc.act, tied
        self.out_shape, self.pre_pool_shape, self.pool = enc.in_shape, enc.pre_pool_shape, enc.pool
        self.stride, self.padding, self.output_padding = enc.stride, enc.padding, enc.output_padding
        w = enc.weight
        shape = (w.shape[1], w.shape[0]) if enc.kind == "fc" else tuple(w.shape)  # ConvT weight: (C_in', C_out', k, k)
        self.weight = None if tied else nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(enc.in_shape[0]))
        if self.weight is not None:  # the same scale as the encoder's default init, with fan-in of B
            bound = 1 / math.sqrt(shape[1] if enc.kind == "fc" else shape[0] * shape[2] * shape[3])
            nn.init.uniform_(self.weight, -bound, bound)

    def linear(self, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """B z + c with the given B (own or tied)."""
        if self.kind == "fc":
            return F.linear(z, weight, self.bias)
        return F.conv_transpose2d(z, weight, self.bias, self.stride, self.padding, self.output_padding)

    def forward(self, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.pool:  # nearest upsampling: each pooled value fills its window (the max's position is lost)
            z = F.interpolate(z, size=self.pre_pool_shape[1:], mode="nearest")
        return self.linear(self.act.inverse(z), weight)


class MirroredAutoencoder(nn.Module):
    """Encoder layers E_1..E_L and decoder layers D_1..D_L, D_i the mirror of E_{L+1-i}."""

    def __init__(self, encoders: Sequence[EncoderLayer], in_shape: Sequence[int], tied: bool = False):
        super().__init__()
        self.in_shape, self.tied = tuple(in_shape), tied
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(DecoderLayer(e, tied) for e in reversed(encoders))
        self.flat = encoders[0].kind == "fc"

    @property
    def depth(self) -> int:
        return len(self.encoders)

    @property
    def code_shape(self) -> tuple[int, ...]:
        return self.encoders[-1].out_shape

    def mirror(self, i: int) -> DecoderLayer:
        """The decoder layer that inverts encoder layer i (0-based)."""
        return self.decoders[self.depth - 1 - i]

    def decoder_weight(self, i: int) -> torch.Tensor:
        """B_i of the mirror of encoder layer i: its own, or the adjoint of A_i when tied."""
        enc, dec = self.encoders[i], self.mirror(i)
        if dec.weight is not None:
            return dec.weight
        return enc.weight.t() if enc.kind == "fc" else enc.weight

    def invert(self, i: int, h_next: torch.Tensor) -> torch.Tensor:
        """D(h_i): the mirror's estimate of h_{i-1} from the output of encoder layer i."""
        return self.mirror(i)(h_next, self.decoder_weight(i))

    def encode_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[h_0, h_1, ..., h_L]; h_0 is the input (flattened for fully connected layers)."""
        hs = [x.flatten(1) if self.flat else x]
        for enc in self.encoders:
            hs.append(enc(hs[-1]))
        return hs

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_all(x)[-1]

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        z = code
        for i in reversed(range(self.depth)):
            z = self.invert(i, z)
        return z.view(-1, *self.in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def inverse_errors(self, hs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per layer ||D_i(E_i(h_{i-1})) - h_{i-1}||^2 / ||h_{i-1}||^2 over the batch (E_i(h_{i-1}) = h_i): the
        training term. The metric in `inverse.layer_report` is the same ratio without the safety margin."""
        out = []
        for i in range(self.depth):
            target = hs[i]
            err = (self.invert(i, hs[i + 1]) - target).pow(2).sum()
            # + 1e-3 per element: a layer whose units all died (ReLU) would otherwise divide by ~0 and blow up
            out.append(err / (target.detach().pow(2).sum() + 1e-3 * target.numel()))
        return out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_fc(
    in_shape: Sequence[int], dims: Sequence[int], act: str = "leaky", slope: float = 0.2, tied: bool = False
) -> MirroredAutoencoder:
    """A fully connected mirrored autoencoder: prod(in_shape) -> dims[0] -> ... -> dims[-1] and back."""
    if not dims:
        raise DojoError("an autoencoder needs at least one layer", "give one or more layer widths")
    a = Activation(act, slope)
    shape: tuple[int, ...] = (math.prod(in_shape),)
    layers = []
    for d in dims:
        layers.append(EncoderLayer("fc", shape, d, a))
        shape = layers[-1].out_shape
    return MirroredAutoencoder(layers, in_shape, tied)


def build_conv(
    in_shape: Sequence[int],
    channels: Sequence[int],
    kernel: int = 3,
    stride: int = 2,
    padding: int = 1,
    pool: int = 0,
    act: str = "leaky",
    slope: float = 0.2,
    tied: bool = False,
) -> MirroredAutoencoder:
    """A fully convolutional mirrored autoencoder: Conv2d layers down, ConvTranspose2d layers back up."""
    if not channels:
        raise DojoError("an autoencoder needs at least one layer", "give one or more channel counts")
    a = Activation(act, slope)
    shape = tuple(in_shape)
    layers = []
    for c in channels:
        layers.append(EncoderLayer("conv", shape, c, a, kernel, stride, padding, pool))
        shape = layers[-1].out_shape
    return MirroredAutoencoder(layers, in_shape, tied)
