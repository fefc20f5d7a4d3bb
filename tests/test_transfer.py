"""The transfer experiment end to end (tiny), its config validation, and the Flowers-102 loader on a fixture
in the real layout (jpg/ + imagelabels.mat + setid.mat)."""

import json

import numpy as np
import pytest
import torch

from torchdojo.data import load_dataset
from torchdojo.data.flowers import official_val_mask
from torchdojo.errors import DojoError
from torchdojo.experiments import EXPERIMENTS, transfer
from torchdojo.experiments.base import build_config, run_experiment

TINY = {"dataset": "digits", "runs": "logreg,efficientnet_lite0:frozen,efficientnet_lite0:finetune",
        "train_subset": 80, "test_subset": 40, "image_size": 32, "mistakes": 5, "unfreeze_phases": 2,
        "train.epochs": 2, "train.batch_size": 16, "train.max_batches": 1, "head_train.epochs": 3}


def test_transfer_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHDOJO_FEATURE_CACHE", str(tmp_path / "cache"))
    path = run_experiment(transfer, scale="smoke", overrides=TINY, device="cpu", runs_root=tmp_path / "runs",
                          verbose=False)
    summary = json.loads((path / "summary.json").read_text())["runs"]
    assert set(summary) == {"logreg", "efficientnet_lite0:frozen", "efficientnet_lite0:finetune"}
    frozen = summary["efficientnet_lite0:frozen"]
    assert frozen["trunk_unchanged"] is True and frozen["trainable"] < frozen["params"]
    assert summary["efficientnet_lite0:finetune"]["trainable"] == summary["efficientnet_lite0:finetune"]["params"]
    figs = {p.name for p in (path / "figures").iterdir()}
    for run in ("logreg", "efficientnet_lite0_frozen", "efficientnet_lite0_finetune"):
        assert f"mistakes_{run}.png" in figs and f"cm_{run}.png" in figs
    html = (path / "report.html").read_text()
    for needle in ("Which would you prefer?", "most confident mistakes", "Input adaptation", "replicated to 3 channels",
                   "bit-identical after training: yes", "per-class test accuracy"):
        assert needle in html, needle
    stages = {p.name for p in (path / "checkpoints").iterdir()}
    assert {"efficientnet_lite0_finetune_p1", "efficientnet_lite0_finetune_p2"} <= stages  # gradual unfreezing
    # A second run reuses the cached features: the report says so.
    path2 = run_experiment(transfer, scale="smoke", overrides={**TINY, "runs": "efficientnet_lite0:frozen"},
                           device="cpu", runs_root=tmp_path / "runs", verbose=False)
    assert "3 hit(s), 0 miss(es)" in (path2 / "report.html").read_text()


def test_transfer_config_and_presets():
    assert EXPERIMENTS.get("transfer") is transfer
    with pytest.raises(DojoError, match="unknown regime"):
        build_config(transfer, "smoke", overrides=["runs=resnet18:melted"])
    with pytest.raises(DojoError, match="unknown backbone"):
        build_config(transfer, "smoke", overrides=["runs=alexnet:frozen"])
    with pytest.raises(DojoError, match="unknown run"):
        build_config(transfer, "smoke", overrides=["runs=nonsense"])
    cifar = build_config(transfer, "full", "cifar10-resnet18")
    assert cifar.image_size == 224 and cifar.runs == ("resnet18:frozen", "small-resnet") and cifar.head == "linear"
    flowers = build_config(transfer, "small", "flowers102")
    assert flowers.runs == ("mobilenet_v2:frozen", "vgg16:frozen", "resnet50:frozen", "mobilenet_v2:scratch")
    ladder = build_config(transfer, "small", "ladder64")
    assert (ladder.dataset, ladder.image_size, ladder.crop, ladder.head) == ("stl10", 64, 84, "mlp")


def test_random_window_crops_inside_the_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = transfer.random_window(4)(x, torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 4, 4)
    for img, o in zip(x, out, strict=True):
        hits = [(a, b) for a in range(3) for b in range(3) if torch.equal(img[:, a : a + 4, b : b + 4], o)]
        assert len(hits) == 1


def _write_flowers(root, n_per_split=(2, 1, 3)):
    """A Flowers-102 folder in torchvision's layout: jpg/image_%05d.jpg, imagelabels.mat, setid.mat."""
    from PIL import Image
    from scipy.io import savemat

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    n = sum(n_per_split)
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        img = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)  # odd sizes: resize + center crop
        Image.fromarray(img).save(folder / "jpg" / f"image_{i:05d}.jpg")
    labels = np.array([(i % 102) + 1 for i in range(n)])  # 1-based, as published
    savemat(folder / "imagelabels.mat", {"labels": labels})
    ids = np.arange(1, n + 1)
    a, b, _ = n_per_split
    savemat(folder / "setid.mat", {"trnid": ids[:a], "valid": ids[a : a + b], "tstid": ids[a + b :]})
    return folder, labels


def test_flowers_loader_on_fixture(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder, labels = _write_flowers(tmp_path)
    splits = load_dataset("flowers102", data_dir=tmp_path, verify=False)
    assert splits.train.x.shape == (3, 3, 224, 224) and splits.test.x.shape == (3, 3, 224, 224)
    assert splits.train.y.tolist() == (labels[[0, 1, 2]] - 1).tolist()  # official train then val
    assert splits.test.y.tolist() == (labels[[3, 4, 5]] - 1).tolist()
    assert len(splits.classes) == 102 and splits.classes[0] == "pink primrose"
    assert official_val_mask(folder).tolist() == [False, False, True]
    with pytest.raises(DojoError, match="md5"):  # the fixture's .mat files are not the published ones
        load_dataset("flowers102", data_dir=tmp_path, verify=True)
