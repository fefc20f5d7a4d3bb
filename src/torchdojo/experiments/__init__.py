"""Experiment registry, filled from the explicit list below. CLI name = module name with '-'."""

from types import ModuleType

from torchdojo.experiments import arch_arithmetic, conv_scratch, ladder, metric_learning, transfer
from torchdojo.experiments.base import module_name
from torchdojo.registry import Registry

EXPERIMENTS: Registry[ModuleType] = Registry("experiment")

for _module in (arch_arithmetic, conv_scratch, ladder, metric_learning, transfer):
    EXPERIMENTS.register(module_name(_module), _module)

__all__ = ["EXPERIMENTS"]
