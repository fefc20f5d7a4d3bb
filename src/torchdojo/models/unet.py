"""H2's small U-Net: an encoder of double convs and 2x2 max-pools, a decoder of 2x2 transposed convs, and (with
`skips`) each decoder stage concatenating the encoder's feature map of the same resolution, as in Ronneberger et
al. 2015 (with padding, so the output has the input's size). Without skips the decoder sees only the bottleneck.
"""

import torch
from torch import nn

from torchdojo.errors import DojoError


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """(3x3 conv -> BN -> ReLU) twice, padding 1."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """(B, in_ch, H, W) -> (B, out_ch, H, W) logits; H and W must be multiples of 2**depth."""

    def __init__(self, in_ch: int = 1, out_ch: int = 1, base: int = 16, depth: int = 3, skips: bool = True):
        super().__init__()
        if depth < 1 or base < 1:
            raise DojoError(f"a U-Net needs depth >= 1 and base >= 1, got {depth} and {base}", "e.g. depth 3, base 16")
        self.depth, self.skips = depth, skips
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            double_conv(c_in, c) for c_in, c in zip([in_ch, *widths[:-2]], widths[:-1], strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(widths[-2], widths[-1])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.dec = nn.ModuleList(
            double_conv(widths[i] * (2 if skips else 1), widths[i]) for i in reversed(range(depth))
        )
        self.out = nn.Conv2d(base, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = up(x)
            x = dec(torch.cat([skip, x], 1) if self.skips else x)
        return self.out(x)

    def check_size(self, h: int, w: int) -> None:
        """A clear error for inputs the pooling cannot halve `depth` times exactly."""
        m = 2**self.depth
        if h % m or w % m:
            raise DojoError(
                f"a depth-{self.depth} U-Net needs height and width divisible by {m}, got {h}x{w}",
                f"use a canvas that is a multiple of {m} (e.g. canvas={-(-max(h, w) // m) * m}) or a smaller depth",
            )
