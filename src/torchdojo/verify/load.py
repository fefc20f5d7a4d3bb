"""Load a submission `path/to/file.py:ClassName` (or `package.module:ClassName`) without ever crashing."""

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

import torch
from torch import nn


class LoadFailure(Exception):
    """The submission could not be loaded; the message says why in a sentence a student can act on."""


def _where(exc: BaseException, path: Path | None) -> str:
    """' (file.py, line 12)' for the innermost frame inside the submission, if there is one."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" ({Path(exc.filename or '?').name}, line {exc.lineno})"
    mine = [f for f in frames if path is not None and Path(f.filename).resolve() == path.resolve()]
    f = (mine or frames or [None])[-1]
    return f" ({Path(f.filename).name}, line {f.lineno})" if f is not None else ""


def describe_exception(exc: BaseException, path: Path | None = None) -> str:
    """'TypeError: message (file.py, line 12)': one line, pointing into the submission when possible."""
    # str() of a SyntaxError already ends with its position, which `_where` adds: use the bare message
    text = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    msg = text.strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}{_where(exc, path)}"


def split_spec(spec: str) -> tuple[str, str]:
    """'a/b.py:Cls' -> ('a/b.py', 'Cls'); a missing ':Cls' is a LoadFailure."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name.isidentifier():
        raise LoadFailure(f"{spec!r} does not name a class: write FILE.py:ClassName (or package.module:ClassName)")
    return source, name


def _import_file(path: Path) -> object:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    mod_name = f"_torchdojo_submission_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise LoadFailure(f"{path} is not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))  # so the submission can import its sibling files
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a broken submission is a readable failure, never a crash
        sys.modules.pop(mod_name, None)
        raise LoadFailure(f"importing {path} failed: {describe_exception(e, path)}") from None
    finally:
        if str(path.parent.resolve()) in sys.path:  # the submission may have edited sys.path itself
            sys.path.remove(str(path.parent.resolve()))
    return module


def load_class(spec: str, allow_function: bool = False) -> tuple[type, Path | None]:
    """The nn.Module subclass (or, with `allow_function`, autograd.Function subclass) named by `spec`, and its file."""
    source, name = split_spec(spec)
    path = Path(source)
    if source.endswith(".py") or path.exists():
        if not path.is_file():
            raise LoadFailure(f"no such file: {source}")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(source)
        except (Exception, SystemExit) as e:
            raise LoadFailure(f"importing module {source} failed: {describe_exception(e)}") from None
        path = Path(getattr(module, "__file__", "") or source)
    obj = getattr(module, name, None)
    if obj is None:
        classes = sorted(k for k, v in vars(module).items() if isinstance(v, type) and not k.startswith("_"))
        raise LoadFailure(f"{source} has no {name!r}; classes defined there: {', '.join(classes) or 'none'}")
    if isinstance(obj, type) and allow_function and issubclass(obj, torch.autograd.Function):
        return obj, path
    if not isinstance(obj, type) or not issubclass(obj, nn.Module):
        expected = "an nn.Module or torch.autograd.Function subclass" if allow_function else "an nn.Module subclass"
        raise LoadFailure(f"{source}:{name} is a {type(obj).__name__}, not {expected}")
    return obj, path
