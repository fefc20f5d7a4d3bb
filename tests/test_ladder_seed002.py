"""`ladder --preset seed002`: seed 002's rungs 1-3 on 3x64x64 inputs (train random crop + flip, test center crop),
on STL-10 when present and on the Fashion-MNIST stand-in (resized, 3 channels) otherwise, the report saying which."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo.data import ImageData
from torchdojo.data.standin import random_window, read_image_folder, resized
from torchdojo.errors import DojoError
from torchdojo.experiments import ladder
from torchdojo.experiments.base import build_config, run_experiment


def _blocks(run: Path) -> list[dict]:
    return json.loads((run / "report.json").read_text())["blocks"]


def _run(tmp_path: Path, data_env: dict, **kw) -> Path:
    return run_experiment(
        ladder,
        scale="smoke",
        preset="seed002",
        device="cpu",
        data_dir=data_env["data_dir"],
        runs_root=tmp_path,
        verbose=False,
        **kw,
    )


def test_preset_is_seed_002s_setup() -> None:
    cfg = build_config(ladder, "small", "seed002")
    assert cfg.rungs == ("logreg", "mlp", "cnn") and cfg.dataset == "stl10" and cfg.standin == "fashion-mnist"
    assert (cfg.train_crop, cfg.test_crop, cfg.channels) == (64, 64, 3)
    assert "flip" in cfg.augment and cfg.augment_all
    assert ladder.input_shape(cfg, (3, 96, 96)) == (3, 64, 64)  # STL-10's 96 px images
    assert ladder.input_shape(cfg, (1, cfg.standin_size, cfg.standin_size)) == (3, 64, 64)  # the stand-in


def test_a_window_larger_than_the_images_is_refused() -> None:
    with pytest.raises(DojoError, match="64x64 training window does not fit the 28x28 images"):
        random_window(64)(torch.zeros(2, 1, 28, 28), torch.Generator())


def test_stand_in_runs_at_smoke_scale_and_says_so(tmp_path: Path, data_env: dict) -> None:
    run = _run(tmp_path, data_env, overrides=["train.max_batches=2"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "fashion-mnist" and set(summary["rungs"]) == {"logreg", "mlp", "cnn"}
    # logreg on 3x64x64: 3*64*64 weights per class + biases
    assert summary["rungs"]["logreg"]["params"] == 10 * 3 * 64 * 64 + 10
    warnings = [b["text"] for b in _blocks(run) if b["type"] == "warning"]
    assert any("stl10 was not found offline" in w and "stand-in: fashion-mnist" in w for w in warnings)
    assert any("resized from 28x28 to 72x72" in w and "replicated to 3" in w for w in warnings)
    texts = " ".join(b.get("text", "") for b in _blocks(run))
    assert "random 64x64 window" in texts and "64 px center crop" in texts


def test_stl10_is_used_when_present(tmp_path: Path, data_env: dict) -> None:
    folder = data_env["data_dir"] / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 20)):
        rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        np.array([1 + i % 10 for i in range(n)], dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    run = _run(tmp_path, data_env, verify=False, overrides=["train.max_batches=1", "rungs=logreg"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "stl10"
    assert summary["rungs"]["logreg"]["params"] == 10 * 3 * 64 * 64 + 10
    assert not any(b["type"] == "warning" and "stand-in" in b["text"] for b in _blocks(run))


def _image_folder(root: Path, per_class: dict[str, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    (root / "train" / "cat" / "empty.png").write_bytes(b"")  # a bad file: left out with a warning


def test_an_image_folder_copy_is_read_resized_and_used(tmp_path: Path, data_env: dict) -> None:
    root = tmp_path / "stl10-folder"
    _image_folder(root, {"train": 10, "test": 2})
    with pytest.warns(UserWarning, match="empty.png"):
        data = read_image_folder(root, 96)
    assert data.train.x.shape == (20, 3, 96, 96) and data.train.x.dtype == torch.uint8
    assert data.classes == ["cat", "dog"] and data.train.y.tolist() == [0] * 10 + [1] * 10 and len(data.test) == 4
    with pytest.warns(UserWarning, match="empty.png"):
        run = _run(tmp_path, data_env, overrides=["train.max_batches=1", "rungs=logreg", f"image_folder={root}"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "stl10-folder" and summary["rungs"]["logreg"]["params"] == 2 * 3 * 64 * 64 + 2
    assert not any(b["type"] == "warning" and "stand-in" in b["text"] for b in _blocks(run))


def test_an_image_folder_without_a_test_split_is_refused(tmp_path: Path) -> None:
    _image_folder(tmp_path / "only-train", {"train": 2})
    with pytest.raises(DojoError, match="has no test/ folder"), pytest.warns(UserWarning):
        read_image_folder(tmp_path / "only-train", 32)


def test_different_train_and_test_crops_are_refused() -> None:
    with pytest.raises(DojoError, match="train_crop=64 and test_crop=56 differ"):
        build_config(ladder, "smoke", "seed002", ["test_crop=56"])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(8, 20), st.integers(8, 20), st.integers(1, 8), st.integers(0, 1000))
def test_random_window_is_a_window_of_each_image(b: int, h: int, w: int, size: int, seed: int) -> None:
    x = torch.arange(b * 2 * h * w, dtype=torch.int32).view(b, 2, h, w)
    out = random_window(size)(x, torch.Generator().manual_seed(seed))
    assert out.shape == (b, 2, size, size)
    for img, win in zip(x, out, strict=True):
        top, left = divmod(int(win[0, 0, 0]) - int(img[0, 0, 0]), w)  # the values encode their position
        assert torch.equal(win, img[:, top : top + size, left : left + size])


def test_resized_keeps_labels_and_uint8() -> None:
    d = ImageData(torch.full((3, 1, 28, 28), 200, dtype=torch.uint8), torch.tensor([0, 1, 2]), ["a", "b", "c"])
    r = resized(d, 72)
    assert r.x.shape == (3, 1, 72, 72) and r.x.dtype == torch.uint8 and torch.equal(r.y, d.y)
    assert int(r.x.min()) == int(r.x.max()) == 200  # a constant image stays constant
    assert resized(d, 0) is d
