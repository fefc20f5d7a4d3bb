"""A zoo backbone behind the shared `Classifier` interface, and the three training regimes.

    model = build_classifier("mobilenet_v2", num_classes=102, head="mlp", regime="frozen")
    fit(model, train, val, cfg, device=dev, params=trainable_params(model))  # frozen: head only

Regimes (MISSION C3, D1, D5-D7):
- frozen: every trunk parameter has requires_grad=False, the trunk stays in eval mode (BN statistics
  and dropout fixed) even under `model.train()`, and `trainable_params` gives the optimizer the head only;
- finetune: pretrained trunk trained too, optionally at `backbone_lr_mult` x the head's LR and unfrozen
  gradually from the top (`unfreeze_top(model, fraction)`); still-frozen BN layers stay in eval mode, and
  with `bn_eval=True` (the default) every trunk BN layer keeps its ImageNet statistics (its scale and shift
  still learn): with few steps and small batches, batch statistics differ from the slowly moving running
  ones (EfficientNet's BN momentum is 0.01) and evaluation would see a different network than training;
- scratch: the same architecture from random init, everything trained.
"""

from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchdojo.backbones.weights import load_state_dict, resolve_weights
from torchdojo.backbones.zoo import BACKBONES, BackboneSpec
from torchdojo.errors import DojoError
from torchdojo.models.base import Classifier

Regime = Literal["frozen", "finetune", "scratch"]
REGIMES: tuple[str, ...] = ("frozen", "finetune", "scratch")


class BackboneClassifier(Classifier):
    """`features` = the backbone's trunk (image -> (B, num_features)); `head` = linear or 2 FC + classifier."""

    def __init__(self, spec: BackboneSpec, trunk: nn.Module, head: nn.Module, pretrained: bool):
        super().__init__()
        self.spec = spec
        self.features = trunk
        self.head = head
        self.num_features = spec.num_features
        self.pretrained = pretrained
        self.regime: str = "finetune"
        self.bn_eval = False  # keep every trunk BN layer in eval mode (fixed statistics) under .train()

    @property
    def trunk_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.features.parameters())

    def train(self, mode: bool = True) -> "BackboneClassifier":
        """Like nn.Module.train, but frozen parts stay in eval mode: their BN statistics never move."""
        super().train(mode)
        if mode and self.trunk_frozen:
            self.features.eval()
        elif mode:
            for m in self.features.modules():
                if isinstance(m, _BatchNorm) and (self.bn_eval or not any(p.requires_grad for p in m.parameters())):
                    m.eval()
        return self


def make_head(
    num_features: int,
    num_classes: int,
    kind: str = "linear",
    hidden: tuple[int, ...] = (512, 256),
    dropout: float = 0.3,
) -> nn.Sequential:
    """`linear`: one Linear layer; `mlp`: C3's 2 FC layers (ReLU, dropout) + a classifier."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(num_features, num_classes))
    if kind != "mlp":
        raise DojoError(f"unknown head {kind!r}", "use linear or mlp")
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def load_pretrained(
    spec: BackboneSpec,
    net: nn.Module,
    weights_path: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
) -> Path:
    """Load the spec's published weights into `net` (built by `spec.build`); returns the file used."""
    path = resolve_weights(spec.weights, spec.name, weights_path, download, verify)
    state = spec.map_keys(load_state_dict(path))
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise DojoError(
            f"{path} does not fit {spec.name}: {str(e).splitlines()[0][:200]}",
            f"pass the weights of {spec.name} ({spec.weights.filename})",
        ) from None
    return path


def load_backbone(
    name: str,
    *,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
) -> BackboneClassifier:
    """The backbone `name` with its ImageNet classifier as head (for predictions), in eval mode."""
    spec = BACKBONES.get(name)
    net = spec.build()
    if pretrained:
        load_pretrained(spec, net, weights_path, download, verify)
    trunk, classifier = spec.split(net)
    return BackboneClassifier(spec, trunk, classifier, pretrained).eval()


def build_classifier(
    name: str,
    num_classes: int,
    *,
    regime: str = "frozen",
    head: str = "linear",
    hidden: tuple[int, ...] = (512, 256),
    dropout: float = 0.3,
    weights_path: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
    bn_eval: bool = True,
) -> BackboneClassifier:
    """Backbone `name` with a fresh head for `num_classes`, set up for `regime` (scratch = random init)."""
    if regime not in REGIMES:
        raise DojoError(f"unknown regime {regime!r}", f"use one of {', '.join(REGIMES)}")
    model = load_backbone(
        name, pretrained=regime != "scratch", weights_path=weights_path, download=download, verify=verify
    )
    model.head = make_head(model.num_features, num_classes, head, hidden, dropout)
    set_regime(model, regime, bn_eval)
    return model.train()


def set_regime(model: BackboneClassifier, regime: str, bn_eval: bool = True) -> None:
    """frozen: no gradient for the trunk (and eval mode under .train()); finetune/scratch: all trainable.

    `bn_eval` (finetune only): trunk BN layers keep their pretrained statistics while the weights train."""
    model.features.requires_grad_(regime != "frozen")
    model.head.requires_grad_(True)
    model.regime = regime
    model.bn_eval = regime == "finetune" and bn_eval
    if regime == "scratch":  # TF-ported BN momentum (0.01) assumes ~1e5 steps; short runs need running stats that
        for m in model.features.modules():  # follow the batches, or evaluation sees untrained statistics
            if isinstance(m, _BatchNorm):
                m.momentum = 0.1


def trunk_blocks(model: BackboneClassifier) -> list[nn.Module]:
    """The trunk's stages, input first: the units gradual unfreezing releases from the top."""
    return [m for _, m in model.spec.stages(model.features) if any(True for _ in m.parameters())]


def unfreeze_top(model: BackboneClassifier, fraction: float) -> int:
    """Make the top `fraction` of the trunk's stages trainable (the rest frozen); returns how many."""
    blocks = trunk_blocks(model)
    n = round(len(blocks) * min(max(fraction, 0.0), 1.0))
    model.features.requires_grad_(False)
    for b in blocks[len(blocks) - n :]:
        b.requires_grad_(True)
    return n


def trainable_params(
    model: BackboneClassifier, backbone_lr_mult: float = 1.0, lr: float | None = None
) -> list[nn.Parameter] | list[dict]:
    """What the optimizer gets: the head only when frozen; else head + trunk (at `backbone_lr_mult` x lr).

    The head's group comes first, at the stage's own LR: `param_groups[0]` (the LR logged per epoch and the one
    a check of the optimizer reads) is the configured `lr`, the trunk's group the scaled one."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    trunk = [p for p in model.features.parameters() if p.requires_grad]
    if not trunk:
        return head
    if backbone_lr_mult == 1.0 or lr is None:
        return head + trunk
    return [{"params": head}, {"params": trunk, "lr": lr * backbone_lr_mult}]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def trunk_state(model: BackboneClassifier) -> dict[str, torch.Tensor]:
    """A detached copy of the trunk's weights and buffers (BN statistics included)."""
    return {k: v.detach().clone() for k, v in model.features.state_dict().items()}
