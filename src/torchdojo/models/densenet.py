"""H1's small DenseNet (torchvision-style) and its two-modality version (image + caption tokens).

A dense layer sees the concatenation of every earlier feature map of its block and adds `growth` new
channels (BN -> ReLU -> 1x1 bottleneck conv -> BN -> ReLU -> 3x3 conv, the bottleneck optional); a
transition (BN -> ReLU -> 1x1 conv -> 2x2 average pool) compresses the channels and halves the resolution
between blocks. `feature_reuse` reads, from the trained weights, how much each layer draws on each earlier
layer's channels (the DenseNet paper's heat map).
"""

import torch
from torch import nn

from torchdojo.errors import DojoError
from torchdojo.models.base import Classifier


class DenseLayer(nn.Module):
    """[BN-ReLU-1x1 conv (bn_size x growth)] -> BN-ReLU-3x3 conv (growth); returns only the new channels."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        mid = cin
        if bn_size:
            mid = bn_size * growth
            layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, mid, 1, bias=False)]
        layers += [nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, growth, 3, padding=1, bias=False)]
        self.body = nn.Sequential(*layers)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The conv that reads the concatenated earlier features (its input channels say what it reuses)."""
        return next(m for m in self.body if isinstance(m, nn.Conv2d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DenseBlock(nn.Module):
    """`n` dense layers; layer i reads the block input and layers 1..i-1, all concatenated on channels."""

    def __init__(self, cin: int, n: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.cin, self.growth = cin, growth
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(n))
        self.cout = cin + n * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv to `cout` channels -> 2x2 average pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, ceil_mode=True)
        )


def dense_features(
    cin: int, growth: int, block_layers: tuple[int, ...], bn_size: int, compression: float, stem: int
) -> tuple[nn.Sequential, int]:
    """Stem conv, dense blocks with transitions between them, BN-ReLU, global average pool, flatten."""
    if not block_layers or min(block_layers) < 1:
        raise DojoError(f"block_layers must be one or more positive counts, got {block_layers}", "e.g. 4,4,4")
    if not 0 < compression <= 1:
        raise DojoError(f"compression must be in (0, 1], got {compression}", "e.g. 0.5 (DenseNet-BC)")
    if growth < 1 or stem < 1:
        raise DojoError(f"growth and stem must be >= 1, got {growth} and {stem}", "e.g. growth 12, stem 24")
    layers: list[nn.Module] = [nn.Conv2d(cin, stem, 3, padding=1, bias=False)]
    c = stem
    for i, n in enumerate(block_layers):
        block = DenseBlock(c, n, growth, bn_size)
        layers.append(block)
        c = block.cout
        if i < len(block_layers) - 1:
            out = max(1, int(c * compression))
            layers.append(Transition(c, out))
            c = out
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c


class SmallDenseNet(Classifier):
    """Stem conv -> dense blocks (growth rate, optional bottleneck) with transitions -> GAP -> Linear head."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        growth: int = 12,
        block_layers: tuple[int, ...] = (4, 4, 4),
        bn_size: int = 4,
        compression: float = 0.5,
        stem: int = 24,
    ):
        super().__init__()
        self.features, self.num_features = dense_features(
            in_shape[0], growth, tuple(block_layers), bn_size, compression, stem
        )
        self.head = nn.Sequential(nn.Linear(self.num_features, num_classes))

    def blocks(self) -> list[DenseBlock]:
        return [m for m in self.features if isinstance(m, DenseBlock)]


def feature_reuse(block: DenseBlock) -> torch.Tensor:
    """(n, n+1) matrix: row i = dense layer i+1, column j = its source (0 = the block input, j = layer j).

    Entry = mean |weight| of the layer's first conv over the input channels that come from that source (and
    over output channels and kernel positions), divided by the row's largest entry, as in the DenseNet
    paper's heat map. Sources a layer cannot see (later layers) are NaN."""
    n = len(block.layers)
    out = torch.full((n, n + 1), float("nan"))
    for i, layer in enumerate(block.layers):
        w = layer.first_conv.weight.detach().abs().float().mean((0, 2, 3))  # per input channel
        spans = [(0, block.cin)] + [
            (block.cin + (j - 1) * block.growth, block.cin + j * block.growth) for j in range(1, i + 1)
        ]
        row = torch.stack([w[a:b].mean() for a, b in spans])
        out[i, : i + 1] = row / row.max().clamp_min(1e-12)
    return out


class CaptionEncoder(nn.Module):
    """Token ids (B, L) -> embedding -> GRU -> the last hidden state (B, hidden). Id 0 is padding."""

    def __init__(self, vocab_size: int, embed: int = 16, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.out_features = hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.embed(tokens))
        return h[-1]


class ImageTextFeatures(nn.Module):
    """The fused features of (images, tokens): DenseNet image features and/or caption features, concatenated,
    then mixed by one Linear -> ReLU (`fuse`) before the classifier.

    `modalities` picks the branches (image, text or both), so the image-only and text-only baselines are the
    same code with one branch left out. A plain image tensor is an image with an empty caption (all padding)."""

    def __init__(self, image: nn.Module | None, text: CaptionEncoder | None, caption_len: int, fuse: nn.Module):
        super().__init__()
        self.image, self.text, self.caption_len, self.fuse = image, text, caption_len, fuse

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if isinstance(x, (tuple, list)):
            images, tokens = x
        else:
            images = x
            tokens = torch.zeros(x.shape[0], self.caption_len, dtype=torch.long, device=x.device)
        parts = []
        if self.image is not None:
            parts.append(self.image(images))
        if self.text is not None:
            parts.append(self.text(tokens))
        return self.fuse(torch.cat(parts, 1))


class ImageTextDenseNet(Classifier):
    """Two-modality DenseNet: image DenseNet features and a GRU caption encoder, fused (concatenated, then one
    Linear -> ReLU) before the Linear head. Input: (images (B, C, H, W), caption token ids (B, L))."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        vocab_size: int = 32,
        caption_len: int = 6,
        modalities: tuple[str, ...] = ("image", "text"),
        growth: int = 8,
        block_layers: tuple[int, ...] = (3, 3),
        bn_size: int = 4,
        compression: float = 0.5,
        stem: int = 16,
        embed: int = 16,
        text_hidden: int = 32,
        fused: int = 64,
    ):
        super().__init__()
        unknown = set(modalities) - {"image", "text"}
        if unknown or not modalities:
            raise DojoError(f"modalities must be image and/or text, got {modalities}", "e.g. image,text")
        image = text = None
        width = 0
        if "image" in modalities:
            image, c = dense_features(in_shape[0], growth, tuple(block_layers), bn_size, compression, stem)
            width += c
        if "text" in modalities:
            text = CaptionEncoder(vocab_size, embed, text_hidden)
            width += text.out_features
        self.modalities = tuple(modalities)
        fuse = nn.Sequential(nn.Linear(width, fused), nn.ReLU())
        self.features = ImageTextFeatures(image, text, caption_len, fuse)
        self.num_features = fused
        self.head = nn.Sequential(nn.Linear(fused, num_classes))
