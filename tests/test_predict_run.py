"""`torchdojo predict RUN_DIR IMAGE...` and torchdojo.checkpoints: a trained run's model rebuilt from its
checkpoint (spec checked, weights_only), images prepared as the run prepared its test images."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from torchdojo import checkpoints
from torchdojo.cli import main
from torchdojo.data import load_dataset
from torchdojo.errors import CheckpointError, DojoError
from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments.base import run_experiment
from torchdojo.models import MODELS, build_model
from torchdojo.runs import atomic_torch_save, load_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A smoke ladder run of the CNN rung."""
    root = tmp_path_factory.mktemp("runs")
    module = EXPERIMENTS.get("ladder")
    return run_experiment(
        module, scale="smoke", overrides={"rungs": "cnn"}, device="cpu", runs_root=root, verbose=False
    )


@pytest.fixture(scope="module")
def test_images():
    return load_dataset("fashion-mnist").test


def _png(x: torch.Tensor, path: Path, mode: str = "L") -> Path:
    """A (1, H, W) uint8 image saved as a PNG (gray, or the gray repeated in RGB)."""
    im = Image.fromarray(x[0].numpy())
    (im.convert("RGB") if mode == "RGB" else im).save(path)
    return path


def test_predict_cli_on_a_smoke_runs_cnn(run_dir, test_images, tmp_path, capsys):
    """The acceptance: `torchdojo predict RUN image.png` prints the top-k classes of the run's CNN, the same
    probabilities as the model gives the test image tensor itself (a PNG round trip changes no pixel)."""
    img = _png(test_images.x[0], tmp_path / "boot.png")
    assert main(["predict", str(run_dir), str(img), "--topk", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{img} (cnn, stage cnn of {run_dir}):"
    want = checkpoints.predict(checkpoints.rebuild(run_dir, "cnn"), test_images.x[:1]).top(3)[0]
    assert len(out) == 4
    for line, (i, name, p) in zip(out[1:], want, strict=True):
        assert name in line and f"{p:7.2%}" in line and f"(class {i})" in line


def test_predict_cli_in_a_fresh_process(run_dir, test_images, tmp_path):
    img = _png(test_images.x[1], tmp_path / "one.png")
    done = subprocess.run(
        [sys.executable, "-m", "torchdojo", "predict", str(run_dir), str(img), "--stage", "cnn", "--topk", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    name = checkpoints.predict(checkpoints.rebuild(run_dir), test_images.x[1:2]).names[0]
    assert name in done.stdout.splitlines()[1]


def test_images_are_prepared_as_the_run_prepared_them(run_dir, test_images, tmp_path):
    """A gray PNG, the same image as RGB, the uint8 tensor: the same input; other sizes are resized to cover
    the model's input and center-cropped; the normalisation is the spec's."""
    model = checkpoints.rebuild(run_dir)
    spec = checkpoints.spec_of(model)
    x = test_images.x[:2]
    gray = [_png(x[i], tmp_path / f"g{i}.png") for i in range(2)]
    rgb = _png(x[0], tmp_path / "rgb.png", "RGB")
    want = (x.float() - spec.mean[0] * 255) / (spec.std[0] * 255)
    assert torch.equal(checkpoints.preprocess(model, x), want)
    assert torch.equal(checkpoints.preprocess(model, gray), want)
    assert torch.equal(checkpoints.preprocess(model, [rgb]), want[:1])
    big = Image.fromarray(x[0, 0].numpy()).resize((56, 84))  # taller than wide: covers 28x28 at 28x42
    big.save(tmp_path / "big.png")
    assert checkpoints.preprocess(model, [tmp_path / "big.png"]).shape == (1, 1, 28, 28)
    sample = checkpoints.preprocess(model, ["skimage:chelsea"])  # a colour photo -> gray 28x28
    assert sample.shape == (1, 1, 28, 28)
    with pytest.raises(DojoError, match="uint8 pixels"):
        checkpoints.preprocess(model, x.float())


def test_prediction_is_deterministic_and_restores_the_mode(run_dir, test_images):
    model = checkpoints.rebuild(run_dir).train()
    a = checkpoints.predict(model, test_images.x[:64])
    b = checkpoints.predict(model, test_images.x[:64], batch_size=7)
    assert model.training and torch.allclose(a.probs, b.probs, atol=1e-6)
    assert torch.allclose(a.probs.sum(1), torch.ones(64)) and a.labels.shape == (64,)
    assert a.names == [a.classes[i] for i in a.labels.tolist()]


def test_default_stage_is_the_last_that_trained(tmp_path):
    run = _fake_run(tmp_path, {"first": "logreg", "second": "mlp"})
    assert checkpoints.stages(run) == ["first", "second"]
    assert checkpoints.checkpoint_path(run)[0] == "second"
    with pytest.raises(DojoError, match="stages with one: first, second"):
        checkpoints.checkpoint_path(run, "third")
    repeated = tmp_path / "repeated"
    (repeated / "seeds" / "1").mkdir(parents=True)
    (repeated / "config.json").write_text("{}")
    with pytest.raises(DojoError, match="one folder per seed") as e:
        checkpoints.checkpoint_path(repeated)
    assert str(repeated / "seeds" / "1") in e.value.fix


def _fake_run(tmp_path: Path, stages: dict[str, str], in_shape=(1, 8, 8), k: int = 3) -> Path:
    """A run folder whose stages' best.pt hold freshly built (described) registry models."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"experiment": "x", "stages": {s: {} for s in stages}}))
    for stage, name in stages.items():
        model = checkpoints.describe(build_model(name, in_shape, k), classes="abc"[:k], mean=[0.5], std=[0.25])
        path = run / "checkpoints" / stage / "best.pt"
        path.parent.mkdir(parents=True)
        atomic_torch_save({"model": model.state_dict(), "spec": dict(model.torchdojo_spec)}, path)
    return run


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registry_model_rebuilds_with_its_weights(tmp_path, name):
    in_shape = (3, 32, 32)
    run = _fake_run(tmp_path, {"s": name}, in_shape, 3)
    saved = load_checkpoint(run / "checkpoints" / "s" / "best.pt")["model"]
    model = checkpoints.rebuild(run, "s")
    assert not model.training and type(model) is MODELS.get(name)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert checkpoints.spec_of(model).classes == ("a", "b", "c")


def _rewrite_spec(run: Path, spec) -> Path:
    path = run / "checkpoints" / "s" / "best.pt"
    state = load_checkpoint(path)
    state["spec"] = spec
    atomic_torch_save(state, path)
    return path


def test_a_checkpoint_without_spec_says_the_run_predates_it(tmp_path, capsys):
    run = _fake_run(tmp_path, {"s": "cnn"})
    _rewrite_spec(run, None)
    with pytest.raises(CheckpointError, match="predates checkpoints that rebuild their model"):
        checkpoints.rebuild(run)
    img = _png(torch.zeros(1, 8, 8, dtype=torch.uint8), tmp_path / "z.png")
    assert main(["predict", str(run), str(img)]) == 2
    assert "predates" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model": "os.system"}, "not in the model registry"),
        ({"in_shape": [1, 8]}, "in_shape"),
        ({"in_shape": [1, 10**6, 10**6]}, "in_shape"),
        ({"num_classes": -1}, "num_classes"),
        ({"options": {"channels": [10**6, 10**6]}}, "does not match its weights"),  # would need terabytes
        ({"options": {"hidden": {"a": 1}}}, "plain values"),
        ({"options": {"no_such_option": 1}}, "does not build"),
        ({"classes": ["a"]}, "classes"),
        ({"preprocessing": {"mean": [0.5], "std": [0.0], "crop": None}}, "std"),
        ({"preprocessing": {"mean": [float("nan")], "std": [1.0], "crop": None}}, "mean"),
        ({"preprocessing": {"mean": [0.5], "std": [1.0], "crop": 99}}, "crop"),
    ],
)
def test_a_forged_spec_is_refused_before_anything_is_built(tmp_path, change, match):
    run = _fake_run(tmp_path, {"s": "cnn"})
    spec = load_checkpoint(run / "checkpoints" / "s" / "best.pt")["spec"]
    _rewrite_spec(run, {**spec, **change})
    with pytest.raises(CheckpointError, match=match):
        checkpoints.rebuild(run)


def test_predict_refusals(run_dir, tmp_path, capsys):
    img = _png(torch.zeros(1, 28, 28, dtype=torch.uint8), tmp_path / "z.png")
    cases = [
        (["predict", str(run_dir), str(img), "--backbone", "mobilenet_v2"], "--backbone"),
        (["predict", str(run_dir), str(img), "--download"], "--download"),
        (["predict", str(run_dir)], "no image given"),
        (["predict", str(img), "--stage", "cnn"], "--stage needs a run folder"),
        (["predict", str(run_dir), str(tmp_path / "missing.png")], "not found"),
        (["predict", str(tmp_path), str(img)], "not a run folder"),
        (["predict", str(run_dir), str(img), "--topk", "0"], "--topk"),
    ]
    for argv, match in cases:
        assert main(argv) == 2, argv
        assert match in capsys.readouterr().err, argv


def test_a_model_without_preprocessing_is_named(tmp_path):
    model = build_model("logreg", (1, 4, 4), 2)
    with pytest.raises(DojoError, match="records no input preprocessing"):
        checkpoints.predict(model, torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="build it with torchdojo.models.build_model"):
        checkpoints.describe(torch.nn.Linear(2, 2), classes=["a", "b"])
