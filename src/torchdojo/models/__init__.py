"""Model registry: every entry builds a `Classifier` from (in_shape, num_classes, **options)."""

from collections.abc import Callable
from typing import Any

from torchdojo.models.base import Classifier
from torchdojo.models.densenet import ImageTextDenseNet, SmallDenseNet
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
MODELS.register("densenet", SmallDenseNet)
MODELS.register("densenet-text", ImageTextDenseNet)


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int, **options: Any) -> Classifier:
    """Build the registered model `name` for inputs of (C, H, W) `in_shape`.

    The model carries `torchdojo_spec` ({"model", "in_shape", "num_classes", "options"}), a plain dict that the
    engine saves beside the weights in every checkpoint, so `torchdojo.checkpoints.rebuild` can build the same
    model again from the checkpoint alone (`torchdojo.checkpoints.describe` adds classes and preprocessing)."""
    model = MODELS.get(name)(in_shape, num_classes, **options)
    model.torchdojo_spec = {
        "model": name,
        "in_shape": [int(v) for v in in_shape],
        "num_classes": int(num_classes),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
    }
    return model


__all__ = ["MODELS", "Classifier", "build_model"]
