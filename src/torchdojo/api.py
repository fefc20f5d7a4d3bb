"""The Python API: what the command line does, callable from a script or a notebook.

    import torchdojo
    r = torchdojo.run("ladder", scale="smoke", train__lr=0.01)   # the same run as `torchdojo run ladder ...`
    r.summary, r.history["cnn"], r.figures, r.report_path
    model = r.load_model("cnn")                                    # rebuilt from its checkpoint, eval mode
    torchdojo.load("runs/ladder/<run>")                            # any run folder, again

`run` goes through the same `build_config` / `run_experiment` as `torchdojo run`: the same resolution
(default < scale < preset < stage default < your settings), the same refusals, the same run folder.
`calc`, `check` and `explain` are the `torchdojo calc`, `check` and `explain` commands as functions.
"""

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchdojo.errors import DojoError
from torchdojo.results import Result


def settings(set: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Config settings from `set` ({"train.lr": 0.01}) and keyword arguments (`train__lr=0.01`: `__` nests),
    as one {dotted key: value} dict. A key given both ways is an error (which one would win is not obvious)."""
    merged = dict(set or {})
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if dotted in merged:
            raise DojoError(f"setting {dotted} was given twice (in set= and as {key}=)", "give it once")
        merged[dotted] = value
    return merged


def run(
    experiment: str,
    scale: str | None = None,
    preset: str | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    download: bool = False,
    runs_dir: str | Path = "runs",
    resume: str | Path | None = None,
    verbose: bool = True,
    set: dict[str, Any] | None = None,
    **overrides: Any,
) -> Result:
    """Run `experiment` (see `torchdojo list`) end to end into a new run folder and return its `Result`.

    scale: smoke | small | full (default small; with `resume`, the one the folder was started with).
    Settings: keyword arguments with `__` for nesting (`train__lr=0.01`, `rungs=["logreg", "cnn"]`) and/or
    `set={"train.lr": 0.01}`; they resolve and are refused exactly as `--set` is. `resume` continues an
    interrupted run folder. Datasets are looked for in `data_dir` first and downloaded only with `download`.
    """
    from torchdojo.experiments import EXPERIMENTS
    from torchdojo.experiments.base import run_experiment

    module = EXPERIMENTS.get(experiment)
    given = settings(set, **overrides)
    try:
        path = run_experiment(
            module,
            scale=scale,
            preset=preset,
            overrides=given or None,
            device=device,
            data_dir=data_dir,
            download=download,
            runs_root=runs_dir,
            resume=resume,
            verbose=verbose,
        )
    except KeyboardInterrupt:  # Ctrl-C, or a notebook's interrupt: say how to continue
        _resume_hint(experiment)
        raise
    return Result(path)


def _resume_hint(experiment: str) -> None:
    """Print the call that resumes the run this process was writing, if it left a folder to resume."""
    from torchdojo.runs import current_run

    path = current_run()
    if path is not None and path.parent.name == "seeds":  # a repeated run resumes from its own folder
        path = path.parent.parent
    if path is None or not (path / "config.json").exists() or (path / "summary.json").exists():
        return
    print(
        f"interrupted; finished epochs are kept. Resume with: torchdojo.run({experiment!r}, resume={str(path)!r})",
        file=sys.stderr,
    )


def load(run_dir: str | Path) -> Result:
    """The `Result` of an existing run folder (finished or not): summary, history, figures, models."""
    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise DojoError(f"{path} is not a run folder (no config.json)", "pass a folder printed by `torchdojo run`")
    return Result(path)


def _shape(value: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            shape = tuple(int(v) for v in value.lower().replace(",", "x").split("x"))
        except ValueError:
            shape = ()
    else:
        shape = tuple(value)
    if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise DojoError(f"input shape {value!r} is not a shape", "give CxHxW without the batch, e.g. (3, 224, 224)")
    return shape


def calc(
    model: Any = None,
    input_shape: str | Sequence[int] = (3, 224, 224),
    *,
    spec: str | None = None,
    batch: int = 1,
    num_classes: int | None = None,
) -> Any:
    """`torchdojo calc` as a function: the per-layer analysis (shapes, parameters, MACs/FLOPs, memory,
    receptive fields) of `model` (an nn.Module, a registered or torchvision model name, or "module:attr") for
    inputs of `input_shape`, or of a textbook `spec` string. Print it with `torchdojo.calc.format.markdown(a)`."""
    from torchdojo.calc import analyze, check_spec
    from torchdojo.calc.resolve import resolve_model

    if spec is not None:
        if model is not None:
            raise DojoError("give either a model or spec=, not both", "drop one of them")
        return check_spec(spec, batch=batch)[1]
    if model is None:
        raise DojoError("no model given", 'torchdojo.calc("resnet18", (3, 224, 224)), or spec="3x32x32 | conv ..."')
    shape = _shape(input_shape)
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = resolve_model(model, shape, num_classes)
    return analyze(model, shape, batch=batch, name=name)


def check(target: str, implementation: str, **options: Any) -> Any:
    """`torchdojo check` as a function: the implementation ("file.py:Class" or "package.module:Class") run in
    an isolated process against the PyTorch reference for `target`; returns the verdict (`.ok`, `.properties`).
    `options` are those of `torchdojo.verify.sandbox.check_isolated` (max_examples, seeds, limits, ...)."""
    import importlib.util

    if importlib.util.find_spec("torchdojo.verify.sandbox") is None:
        raise DojoError("this torchdojo has no isolated checker (torchdojo.verify.sandbox)", "use `torchdojo check`")
    from torchdojo.verify.sandbox import check_isolated

    return check_isolated(target, implementation, **options)


TOPICS = ("conv-backprop", "transposed-conv")


def _matrix(value: Any) -> Any:
    import torch

    from torchdojo.nn.conv_explain import parse_matrix

    if isinstance(value, str):
        return parse_matrix(value)
    return torch.as_tensor(value, dtype=torch.float64)


def explain(
    topic: str,
    *,
    input_size: tuple[int, int] = (3, 3),
    kernel_size: tuple[int, int] = (2, 2),
    input: Any = "1 2; 3 4",
    kernel: Any = "1 2; 3 4",
    stride: int = 1,
    padding: int = 0,
    seed: int = 0,
) -> Any:
    """`torchdojo explain` as a function: a calculation worked step by step and checked against PyTorch.
    conv-backprop uses input_size, kernel_size, stride and seed; transposed-conv uses input and kernel (a
    "1 2; 3 4" string, nested lists or a tensor), stride and padding. Returns the explanation (`.text`,
    `.ok`, `.checks`)."""
    from torchdojo.nn.conv_explain import explain_conv_backprop, explain_transposed_conv

    if topic not in TOPICS:
        raise DojoError(f"unknown topic {topic!r}", f"topics: {', '.join(TOPICS)}")
    try:
        if topic == "conv-backprop":
            return explain_conv_backprop(*input_size, *kernel_size, stride, seed)
        return explain_transposed_conv(_matrix(input), _matrix(kernel), stride, padding)
    except ValueError as e:
        raise DojoError(str(e), "see help(torchdojo.explain) for the expected values") from None
