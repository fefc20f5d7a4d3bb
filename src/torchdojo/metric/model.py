"""The metric-learning backbone: conv blocks -> global average pool -> a linear embedding, then a head.

`features(x)` is the embedding (B, embedding_dim), not L2-normalised here: the triplet loss
normalises it, and the cross-entropy head reads it as is. `main_layers` names the modules whose
outputs are the feature maps shown and probed for separability.
"""

import torch
from torch import nn

from torchdojo.models.base import Classifier


class MetricCNN(Classifier):
    """Conv-BN-ReLU-MaxPool blocks, global average pool, Linear embedding; head = one Linear layer."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, ...] = (32, 64, 128),
        embedding_dim: int = 64,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        self.main_layer_names: list[str] = []
        cin = in_shape[0]
        for i, cout in enumerate(channels):
            # ReLU not in place: its output is what a forward hook records as the block's feature map.
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            self.main_layer_names.append(f"block{i + 1}")
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, embedding_dim)]
        self.features = nn.Sequential(*layers)
        self.num_features = embedding_dim
        self.head = nn.Sequential(nn.Linear(embedding_dim, num_classes))

    def main_layers(self) -> dict[str, nn.Module]:
        """Block name -> its ReLU (the block's feature map before pooling), shallow to deep."""
        relus = [m for m in self.features if isinstance(m, nn.ReLU)]
        return dict(zip(self.main_layer_names, relus, strict=True))


def main_layers(model: nn.Module, max_layers: int = 4) -> dict[str, nn.Module]:
    """The layers whose feature maps are shown: `model.main_layers()` if defined, else up to
    `max_layers` evenly spaced Conv2d modules of `model.features` (any Classifier)."""
    if hasattr(model, "main_layers"):
        return model.main_layers()
    root = getattr(model, "features", model)
    convs = [(n, m) for n, m in root.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return {}
    if len(convs) > max_layers:
        pick = torch.linspace(0, len(convs) - 1, max_layers).round().long().tolist()
        convs = [convs[i] for i in pick]
    return {"conv_" + n.replace(".", "_"): m for n, m in convs}
