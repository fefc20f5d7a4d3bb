"""Turn a model name into an nn.Module: a registered model, a torchvision classifier, `module:attr`, or a
built-in layer written as `torch.nn.NAME(literal arguments)`."""

import ast
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


def _dotted(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [*_dotted(node.value), node.attr]
    return []


def _literal(node: ast.expr, text: str) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise DojoError(
            f"{text!r}: argument {ast.unparse(node)!r} is not a literal",
            "write numbers, strings, True/False/None, or tuples and lists of them",
        ) from None


def from_expression(text: str) -> nn.Module:
    """`torch.nn.LSTM(32, 64, 2, batch_first=True)` (or `nn.LSTM(...)`): the layer, built from literal
    arguments only. The text is parsed, never executed: nothing but a torch.nn class is called."""
    form = "write torch.nn.NAME(literal arguments), e.g. 'torch.nn.LSTM(32, 64, 2)'"
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise DojoError(f"cannot parse model expression {text!r}", form) from None
    path = _dotted(call.func) if isinstance(call, ast.Call) else []
    if path[:-1] not in (["torch", "nn"], ["nn"]):
        raise DojoError(f"{text!r} is not a torch.nn layer call", form)
    cls = getattr(nn, path[-1], None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        layers = {n.lower(): n for n in dir(nn) if n[:1].isupper()}
        close = [layers[n] for n in difflib.get_close_matches(path[-1].lower(), list(layers), n=3)]
        raise DojoError(f"torch.nn has no layer {path[-1]!r}", f"did you mean {', '.join(close)}?" if close else form)
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise DojoError(f"{text!r}: *args and **kwargs are not accepted", form)
    args = [_literal(a, text) for a in call.args]
    kwargs = {k.arg: _literal(k.value, text) for k in call.keywords}
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DojoError(f"cannot build {text!r}: {e}", f"check the arguments of torch.nn.{path[-1]}") from None


def default_input(model: nn.Module) -> tuple[int, ...]:
    """The input shape (no batch) calc uses when --input is not given: TxF with T = 32 time steps for a
    bare recurrent layer, the feature count for a bare cell or Linear, else 3x224x224."""
    if isinstance(model, nn.RNNBase):
        return (32, model.input_size)
    if isinstance(model, nn.RNNCellBase):
        return (model.input_size,)
    if isinstance(model, nn.Linear):
        return (model.in_features,)
    return (3, 224, 224)


def resolve_model(name: str, in_shape: tuple[int, ...], num_classes: int | None = None) -> nn.Module:
    """A registered torchdojo model, a torchvision classification model (random init), `module:attr` or
    `torch.nn.NAME(literal args)`."""
    if "(" in name:
        return from_expression(name)
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
        "resnet18, a Python module:attr, or a layer such as 'torch.nn.LSTM(32, 64, 2)'",
    )
