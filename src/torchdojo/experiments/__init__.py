"""Experiment registry, filled from the explicit list below. CLI name = module name with '-'."""

from types import ModuleType

from torchdojo.experiments import (
    arch_arithmetic,
    autoencoder,
    cnn_properties,
    conv_scratch,
    densenet_vs_resnet,
    exam_short_questions,
    ladder,
    metric_learning,
    rnn,
    text_autoencoder,
    transfer,
    unet,
    yolo,
)
from torchdojo.experiments.base import module_name
from torchdojo.registry import Registry

EXPERIMENTS: Registry[ModuleType] = Registry("experiment")

for _module in (
    arch_arithmetic,
    autoencoder,
    cnn_properties,
    conv_scratch,
    densenet_vs_resnet,
    exam_short_questions,
    ladder,
    metric_learning,
    rnn,
    text_autoencoder,
    transfer,
    unet,
    yolo,
):
    EXPERIMENTS.register(module_name(_module), _module)

__all__ = ["EXPERIMENTS"]
