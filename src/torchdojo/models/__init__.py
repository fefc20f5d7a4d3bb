"""Model registry: every entry builds a `Classifier` from (in_shape, num_classes, **options)."""

from collections.abc import Callable
from typing import Any

from torchdojo.models.base import Classifier
from torchdojo.models.ladder import CNN, MLP, BaselineModel, ImprovedCNN, LogisticRegression, TextbookCNN
from torchdojo.models.resnet import SmallResNet
from torchdojo.registry import Registry

MODELS: Registry[Callable[..., Classifier]] = Registry("model")
MODELS.register("logreg", LogisticRegression)
MODELS.register("mlp", MLP)
MODELS.register("cnn", CNN)
MODELS.register("baseline", BaselineModel)
MODELS.register("improved-cnn", ImprovedCNN)
MODELS.register("textbook-cnn", TextbookCNN)
MODELS.register("small-resnet", SmallResNet)


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int, **options: Any) -> Classifier:
    """Build the registered model `name` for inputs of (C, H, W) `in_shape`."""
    return MODELS.get(name)(in_shape, num_classes, **options)


__all__ = ["MODELS", "Classifier", "build_model"]
