"""The classification ladder's models (MISSION C3, C4): logistic regression, MLP, CNNs.

All take `in_shape=(C, H, W)` and `num_classes`; widths and switches are keyword arguments.
"""

from torch import nn

from torchdojo.models.base import Classifier, flat_size


class LogisticRegression(Classifier):
    """Softmax regression on flattened pixels: one Linear layer (C*H*W -> classes)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.features = nn.Flatten()
        self.num_features = in_shape[0] * in_shape[1] * in_shape[2]
        self.head = nn.Sequential(nn.Linear(self.num_features, num_classes))


class MLP(Classifier):
    """Flatten, then `hidden` Linear-BN-ReLU-Dropout blocks (>= 3 for C3), then a classifier."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        hidden: tuple[int, ...] = (512, 256, 128),
        dropout: float = 0.2,
        batch_norm: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_shape[0] * in_shape[1] * in_shape[2]
        for h in hidden:
            layers += [nn.Linear(width, h, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(h)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Sequential(nn.Linear(width, num_classes))


def conv_block(cin: int, cout: int, batch_norm: bool, kernel: int = 3, pool: bool = True) -> list[nn.Module]:
    """Conv(k, same padding) [-> BN] -> ReLU [-> MaxPool 2], computed as [MaxPool ->] ReLU: see `pool_relu`."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not batch_norm)]
    layers += [nn.BatchNorm2d(cout)] if batch_norm else []
    layers += pool_relu() if pool else [nn.ReLU(inplace=True)]
    return layers


def pool_relu() -> list[nn.Module]:
    """ReLU then 2x2 max-pool, in the cheaper order: max-pool, then ReLU.

    ReLU is monotone, so max(relu(a), relu(b), ...) == relu(max(a, b, ...)): the same output, and the same
    gradient (both send it to the window's first maximum, or nowhere when that maximum is <= 0), while the
    ReLU and its backward touch a quarter of the elements. On a 2-core CPU this is ~10% of a training step of
    the ladder CNN (tests/test_models.py checks outputs and gradients against the textbook order)."""
    return [nn.MaxPool2d(2), nn.ReLU(inplace=True)]


class CNN(Classifier):
    """C3's CNN: conv blocks (BN, ReLU, max-pool) -> flatten -> 2 FC layers with dropout -> classifier."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, ...] = (32, 64),
        fc: tuple[int, ...] = (256, 128),
        dropout: float = 0.3,
        batch_norm: bool = True,
        convs_per_block: int = 1,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_shape[0]
        for cout in channels:
            for i in range(convs_per_block):
                layers += conv_block(cin, cout, batch_norm, pool=i == convs_per_block - 1)
                cin = cout
        layers.append(nn.Flatten())
        width = flat_size(nn.Sequential(*layers), in_shape)
        for h in fc:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Sequential(nn.Linear(width, num_classes))


class BaselineModel(Classifier):
    """C4's given model, exactly: conv 3->32 k5, ReLU, max-pool 2, flatten, FC 32*14*14 -> 10."""

    def __init__(self, in_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], 32, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        self.num_features = flat_size(self.features, in_shape)  # 32*14*14 for 3x32x32
        self.head = nn.Sequential(nn.Linear(self.num_features, num_classes))


class ImprovedCNN(Classifier):
    """C4's improved net (<= 4 conv, <= 3 FC), with switches for batch norm and dropout."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, ...] = (32, 64, 128, 128),
        fc: tuple[int, ...] = (256, 128),
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(channels) > 4 or len(fc) > 2:
            raise ValueError("C4 allows at most 4 conv layers and 3 FC layers (2 hidden + classifier)")
        layers: list[nn.Module] = []
        cin = in_shape[0]
        for i, cout in enumerate(channels):
            layers += conv_block(cin, cout, batch_norm, pool=i % 2 == 1 or i == len(channels) - 1)
            cin = cout
        layers.append(nn.Flatten())
        width = flat_size(nn.Sequential(*layers), in_shape)
        for h in fc:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            width = h
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Sequential(nn.Linear(width, num_classes))


class TextbookCNN(Classifier):
    """The benchmark CNN of benchmarks/textbook_fashion_mnist.py, layer for layer (ReLU + max-pool as `pool_relu`)."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        c, h, w = in_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            *pool_relu(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            *pool_relu(),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 128),
            nn.ReLU(),
            nn.Dropout(0.3),
        )
        self.num_features = 128
        self.head = nn.Sequential(nn.Linear(128, num_classes))
