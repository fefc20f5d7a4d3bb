"""D3's small ResNet: a stem, three residual blocks that each halve the resolution, GAP and a head."""

import torch
from torch import nn

from torchdojo.models.base import Classifier


class ResidualBlock(nn.Module):
    """Two 3x3 convs with BN; the first strides by 2; a 1x1 strided conv projects the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(Classifier):
    """Stem conv -> 3 downsampling residual blocks -> adaptive average pool -> Linear head."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        widths: tuple[int, ...] = (32, 64, 128),
        stem: int = 32,
    ):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_shape[0], stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        ]
        cin = stem
        for w in widths:
            layers.append(ResidualBlock(cin, w, stride=2))
            cin = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.num_features = cin
        self.head = nn.Sequential(nn.Linear(cin, num_classes))
