"""torchdojo: a deep-learning course's experiments as reproducible, verifiable software.

The Python API (everything is imported on first use, so `import torchdojo` stays fast):

    torchdojo.run("ladder", scale="smoke", train__lr=0.01) -> Result   # `torchdojo run`, as a function
    torchdojo.load("runs/ladder/<run>") -> Result                       # any run folder again
    torchdojo.calc("resnet18", (3, 224, 224))                           # `torchdojo calc`
    torchdojo.check("conv2d", "my_conv.py:Conv2d")                      # `torchdojo check` (isolated)
    torchdojo.explain("conv-backprop")                                  # `torchdojo explain`
    torchdojo.models.build_model("cnn", (1, 28, 28), 10)                # the model registry
    from torchdojo.nn import Conv2d                                     # the from-scratch layers
    torchdojo.checkpoints.rebuild(run_dir, "cnn")                       # a trained model from its checkpoint

`torchdojo.calc` is both the calculator package (`torchdojo.calc.analyze`, `torchdojo.calc.format`) and,
called, `torchdojo.api.calc`: the package module is given a callable class when it is imported.
"""

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = {"run": "api", "load": "api", "check": "api", "explain": "api", "Result": "results", "Table": "results"}
_MODULES = ("calc", "checkpoints", "experiments", "models", "nn", "notebook")
__all__ = ["__version__", *_API, *_MODULES]


class _CallableModule(types.ModuleType):
    """The type of the `torchdojo.calc` package: a module that, called, runs `torchdojo.api.calc`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torchdojo.api import calc

        return calc(*args, **kwargs)


class _Package(types.ModuleType):
    """The type of the `torchdojo` package: when the import system sets the `calc` sub-package on it (however
    it was first imported), that module becomes callable."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "calc" and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """The API's names and sub-packages, imported when first used."""
    if name in _API:
        return getattr(importlib.import_module(f"torchdojo.{_API[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"torchdojo.{name}")
    raise AttributeError(f"module 'torchdojo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
