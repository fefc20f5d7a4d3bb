"""`torchdojo export RUN_DIR --format torchscript|onnx`: a trained model as a file that runs without torchdojo.

The stage's model is rebuilt from its best checkpoint, exported, and the export is checked by running it: the
file is loaded back (torch.jit.load; for ONNX, onnx.checker and then onnxruntime when installed, else ONNX's
reference evaluator) on a seeded sample batch and compared with the eager model. Only a file that passes is
written (through a temp file and a rename), beside FILE.json: the model's input shape, classes and
preprocessing, which the exported graph does not contain.
"""

import argparse
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

NAME = "export"
HELP = "export a trained model (a run folder's stage) to TorchScript or ONNX, checked against the eager model"
DESCRIPTION = """Export the model one stage of a run trained (its best checkpoint) and check the export.
  torchscript  torch.jit.trace (batch size free), loaded back with torch.jit.load
  onnx         torch.onnx.export (batch size dynamic), needs the optional onnx and onnxscript packages
               (pip install 'torchdojo[export]'); checked with onnx.checker, then run with onnxruntime when it
               is installed, else with ONNX's reference evaluator
The export runs on a seeded sample batch and must match the eager model (max |diff| <= 1e-4 * (1 + max |y|)).
FILE.json beside it records the input shape, class names and preprocessing (mean, std, crop) the model needs.
Default FILE: RUN_DIR/exports/STAGE.onnx or RUN_DIR/exports/STAGE.torchscript.pt.
Examples:
  torchdojo export runs/ladder/20261201-101500-ab12cd --stage cnn --format onnx
  torchdojo export runs/ladder/20261201-101500-ab12cd --format torchscript -o cnn.pt"""

SAMPLE = 4  # images in the check batch
TOLERANCE = 1e-4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (printed by `torchdojo run`)")
    p.add_argument("--stage", default=None, help="the stage whose model to export (default: the last that trained)")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"], help="what to export to")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="where to write it (default: see above)")


def _require_onnx() -> None:
    from torchdojo.errors import DojoError

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise DojoError(
            f"--format onnx needs the optional package{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            "pip install 'torchdojo[export]' (or use --format torchscript)",
        )


def _write_torchscript(model: Any, sample: Any, path: Path) -> tuple[Any, str]:
    """Trace `model` (on half of `sample`: the batch size stays free) into `path`; returns the export's outputs
    on the whole `sample` and what ran them."""
    import torch

    with warnings.catch_warnings():  # TorchScript is deprecated upstream; it still works and was asked for
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # what they warn of is checked on the sample
        torch.jit.trace(model, sample[: len(sample) // 2]).save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(sample), "torch.jit.load"


def _write_onnx(model: Any, sample: Any, path: Path) -> tuple[Any, str]:
    """Export `model` to ONNX at `path` (dynamic batch, exported on half of `sample`), check the graph, run it on
    the whole `sample`."""
    import onnx
    import torch

    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (sample[: len(sample) // 2],), dynamo=True, dynamic_shapes=({0: batch},), verbose=False
        )
    program.save(str(path))
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    name = graph.graph.input[0].name
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {name: sample.numpy()})[0]), "onnx.checker + onnxruntime"
    from onnx.reference import ReferenceEvaluator

    out = ReferenceEvaluator(graph).run(None, {name: sample.numpy()})[0]
    return torch.from_numpy(out), "onnx.checker + onnx.reference (onnxruntime is not installed)"


def export(run_dir: str | Path, fmt: str, stage: str | None = None, output: str | Path | None = None) -> dict:
    """Export a run's stage to `fmt` (torchscript | onnx), check it, write it and its FILE.json; returns what
    was done (stage, path, bytes, checked_with, max_diff)."""
    import torch

    from torchdojo import checkpoints
    from torchdojo.errors import DojoError
    from torchdojo.runs import atomic_write_json

    if fmt == "onnx":
        _require_onnx()
    stage, ckpt = checkpoints.checkpoint_path(run_dir, stage)
    model, spec = checkpoints.load(ckpt)
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    path = Path(output) if output else Path(run_dir) / "exports" / f"{stage}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.randn(SAMPLE, *spec.in_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(sample)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write = _write_onnx if fmt == "onnx" else _write_torchscript
        try:
            got, how = write(model, sample, Path(tmp))
        except DojoError:
            raise
        except Exception as e:  # the exporter's own failure, e.g. an op it does not know
            raise DojoError(
                f"exporting stage {stage} ({spec.model}) to {fmt} failed: {type(e).__name__}: {str(e)[:300]}",
                "try the other --format",
            ) from None
        diff = float((got.float() - eager).abs().max())
        if not diff <= TOLERANCE * (1 + float(eager.abs().max())):
            raise DojoError(
                f"the {fmt} export of stage {stage} gives other outputs than the model (max |diff| {diff:.3g})",
                "nothing was written; try the other --format",
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    atomic_write_json(Path(f"{path}.json"), {"stage": stage, "format": fmt, **spec.to_dict()})
    return {"stage": stage, "path": path, "bytes": path.stat().st_size, "checked_with": how, "max_diff": diff}


def main(args: argparse.Namespace) -> int:
    done = export(args.run_dir, args.format, args.stage, args.output)
    print(
        f"exported stage {done['stage']} to {done['path']} ({done['bytes']:,} bytes); checked with "
        f"{done['checked_with']} on {SAMPLE} sample inputs: max |diff| vs the model {done['max_diff']:.2g}"
    )
    print(f"input shape, classes and preprocessing: {done['path']}.json")
    return 0
