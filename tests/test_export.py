"""`torchdojo export RUN_DIR --format torchscript|onnx`: the export is run and compared with the eager model
before it is written; onnx is optional (a clear error names the extra)."""

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

from torchdojo import checkpoints
from torchdojo.cli import main
from torchdojo.commands import export_cmd
from torchdojo.errors import DojoError
from torchdojo.models import MODELS, build_model
from torchdojo.runs import atomic_torch_save, load_checkpoint


def _run(tmp_path: Path, name: str = "cnn", in_shape=(1, 28, 28), k: int = 10, spec: bool = True) -> Path:
    """A run folder whose stage `s` holds a (randomly initialised, BN statistics set) registry model."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "s" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"experiment": "ladder", "stages": {"s": {}}}))
    torch.manual_seed(0)
    model = checkpoints.describe(
        build_model(name, in_shape, k), classes=[str(i) for i in range(k)], mean=[0.3], std=[0.4]
    )
    model.train()(torch.randn(8, *in_shape))  # running statistics that are not the defaults
    atomic_torch_save({"model": model.state_dict(), "spec": dict(model.torchdojo_spec) if spec else None}, ckpt)
    return run


def _eager(run: Path, x: torch.Tensor) -> torch.Tensor:
    model = checkpoints.rebuild(run, "s")
    with torch.no_grad():
        return model(x)


def test_torchscript_export_runs_as_the_model(tmp_path, capsys):
    run = _run(tmp_path)
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    path = run / "exports" / "s.torchscript.pt"
    assert f"exported stage s to {path}" in capsys.readouterr().out
    x = torch.randn(5, 1, 28, 28)  # another batch size than the one traced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    assert torch.allclose(loaded(x), _eager(run, x), atol=1e-5)
    meta = json.loads(Path(f"{path}.json").read_text())
    assert meta["model"] == "cnn" and meta["in_shape"] == [1, 28, 28] and meta["classes"][9] == "9"
    assert meta["preprocessing"]["mean"] == [0.3] and meta["format"] == "torchscript"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registry_model_exports_to_torchscript(tmp_path, name):
    run = _run(tmp_path, name, (3, 32, 32), 4)
    done = export_cmd.export(run, "torchscript", output=tmp_path / "m.pt")
    assert done["max_diff"] <= 1e-4 and done["path"].is_file()


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the export extra (onnx) is not installed")
def test_onnx_export_is_checked_and_runs(tmp_path, capsys):
    import onnx
    from onnx.reference import ReferenceEvaluator

    run = _run(tmp_path)
    out = tmp_path / "out" / "cnn.onnx"
    assert main(["export", str(run), "--stage", "s", "--format", "onnx", "-o", str(out)]) == 0
    assert "checked with onnx.checker" in capsys.readouterr().out
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    x = torch.randn(3, 1, 28, 28)  # the batch size is free
    got = ReferenceEvaluator(graph).run(None, {graph.graph.input[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), _eager(run, x), atol=1e-4)
    assert json.loads(Path(f"{out}.json").read_text())["format"] == "onnx"


def test_onnx_missing_names_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert main(["export", str(_run(tmp_path)), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "needs the optional package onnx" in err and "pip install 'torchdojo[export]'" in err


def test_an_export_that_differs_from_the_model_is_not_written(tmp_path, monkeypatch):
    run = _run(tmp_path)
    monkeypatch.setattr(
        export_cmd, "_write_torchscript", lambda model, x, path: (model(x).detach() + 1, "a broken exporter")
    )
    with pytest.raises(DojoError, match="other outputs than the model"):
        export_cmd.export(run, "torchscript")
    assert not (run / "exports" / "s.torchscript.pt").exists()
    assert not list((run / "exports").iterdir())


def test_export_refusals(tmp_path, capsys):
    run = _run(tmp_path, spec=False)
    assert main(["export", str(run), "--format", "torchscript"]) == 2
    assert "predates" in capsys.readouterr().err
    assert main(["export", str(run), "--stage", "nope", "--format", "torchscript"]) == 2
    assert "stages with one: s" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none"), "--format", "torchscript"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(run), "--format", "tflite"])


def test_checkpoint_weights_are_the_exported_weights(tmp_path):
    """The exported file holds the checkpoint's weights (not a fresh model's)."""
    run = _run(tmp_path, "logreg")
    done = export_cmd.export(run, "torchscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(done["path"]))
    saved = load_checkpoint(run / "checkpoints" / "s" / "best.pt")["model"]
    assert torch.equal(dict(loaded.named_parameters())["head.0.weight"], saved["head.0.weight"])
