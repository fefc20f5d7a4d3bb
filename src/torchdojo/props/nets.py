"""The small classifiers whose behaviour under shifted test images is compared (MISSION H5).

All four share two 3x3 conv + ReLU layers; they differ only in what comes between them and the linear head:
nothing (every position has its own head weights), 2x2 max-pooling after each conv, or global average pooling.
"""

import dataclasses

import torch
from torch import nn

from torchdojo.models.base import Classifier, flat_size


@dataclasses.dataclass(frozen=True)
class Variant:
    pool: str  # none | max | global
    augment: bool  # train on randomly shifted images (zero-pad + random crop)
    why: str


VARIANTS: dict[str, Variant] = {
    "no-pool": Variant("none", False, "conv, conv, then a linear head on every position: no invariance built in"),
    "max-pool": Variant("max", False, "2x2 max-pooling after each conv: small shifts inside a window vanish"),
    "global-pool": Variant("global", False, "global average pooling before the head: position is averaged out"),
    "global-pool+shift-aug": Variant("global", True, "global pooling, trained on randomly shifted images"),
}


class ShiftNet(Classifier):
    """conv3x3 -> ReLU [-> maxpool2] -> conv3x3 -> ReLU [-> maxpool2 | global avg pool] -> flatten -> linear."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, channels: tuple[int, int], pool: str):
        super().__init__()
        c1, c2 = channels
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], c1, 3, padding=1), nn.ReLU()]
        if pool == "max":
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU()]
        if pool == "max":
            layers.append(nn.MaxPool2d(2))
        elif pool == "global":
            layers.append(nn.AdaptiveAvgPool2d(1))
        elif pool != "none":
            raise ValueError(f"pool must be none, max or global, got {pool!r}")
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.num_features = flat_size(self.features, in_shape)
        self.head = nn.Linear(self.num_features, num_classes)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.features[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
