"""Turn a model name into an nn.Module: a registered model, a torchvision classifier, or `module:attr`."""

import difflib
import importlib
import importlib.util
from pathlib import Path

from torch import nn

from torchdojo.errors import DojoError


def _from_path(ref: str) -> nn.Module:
    """`pkg.mod:attr` or `file.py:attr`: a module instance, or a class/function called without args."""
    where, _, attr = ref.rpartition(":")
    try:
        if where.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            if spec is None or spec.loader is None or not Path(where).exists():
                raise FileNotFoundError(where)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(where)
    except (ImportError, FileNotFoundError) as e:
        raise DojoError(
            f"cannot import {where!r}: {e}", "give an importable module or a .py file, then :ATTR"
        ) from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DojoError(f"{where!r} has no attribute {attr!r}", "check the name after the ':'")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj
    if callable(obj):
        try:
            built = obj()
        except TypeError as e:
            raise DojoError(
                f"{ref} cannot be built without arguments: {e}",
                "point at a function that returns the model with its arguments filled in",
            ) from None
        if isinstance(built, nn.Module):
            return built
    raise DojoError(f"{ref} is not an nn.Module (nor builds one)", "point at a module instance, class or factory")


def resolve_model(name: str, in_shape: tuple[int, ...], num_classes: int | None = None) -> nn.Module:
    """A registered torchdojo model, a torchvision classification model (random init) or `module:attr`."""
    if ":" in name:
        return _from_path(name)
    from torchdojo.models import MODELS, build_model

    if name in MODELS:
        if len(in_shape) != 3:
            raise DojoError(
                f"model {name!r} takes a CxHxW input, got {'x'.join(map(str, in_shape))}",
                "use --input like 3x32x32",
            )
        return build_model(name, tuple(in_shape), num_classes or 10)
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name in known:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000)
    close = difflib.get_close_matches(name, list(MODELS) + known, n=3)
    raise DojoError(
        f"unknown model {name!r}",
        (f"did you mean {', '.join(close)}? " if close else "")
        + "use a registered model (torchdojo list models), a torchvision classification model such as "
        "resnet18, or a Python module:attr",
    )
