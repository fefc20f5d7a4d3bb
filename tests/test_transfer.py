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

TINY = {
    "dataset": "digits",
    "runs": "logreg,efficientnet_lite0:frozen,efficientnet_lite0:finetune",
    "train_subset": 80,
    "test_subset": 40,
    "image_size": 32,
    "mistakes": 5,
    "unfreeze_phases": 2,
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.max_batches": 1,
    "head_train.epochs": 3,
}


def test_transfer_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHDOJO_FEATURE_CACHE", str(tmp_path / "cache"))
    path = run_experiment(
        transfer, scale="smoke", overrides=TINY, device="cpu", runs_root=tmp_path / "runs", verbose=False
    )
    summary = json.loads((path / "summary.json").read_text())["runs"]
    assert set(summary) == {"logreg", "efficientnet_lite0:frozen", "efficientnet_lite0:finetune"}
    frozen = summary["efficientnet_lite0:frozen"]
    assert frozen["trunk_unchanged"] is True and frozen["trainable"] < frozen["params"]
    assert summary["efficientnet_lite0:finetune"]["trainable"] == summary["efficientnet_lite0:finetune"]["params"]
    figs = {p.name for p in (path / "figures").iterdir()}
    for run in ("logreg", "efficientnet_lite0_frozen", "efficientnet_lite0_finetune"):
        assert f"mistakes_{run}.png" in figs and f"cm_{run}.png" in figs
    html = (path / "report.html").read_text()
    for needle in (
        "Which would you prefer?",
        "most confident mistakes",
        "Input adaptation",
        "replicated to 3 channels",
        "bit-identical after training: yes",
        "per-class test accuracy",
    ):
        assert needle in html, needle
    stages = {p.name for p in (path / "checkpoints").iterdir()}
    assert {"efficientnet_lite0_finetune_p1", "efficientnet_lite0_finetune_p2"} <= stages  # gradual unfreezing
    # A second run reuses the cached features: the report says so.
    path2 = run_experiment(
        transfer,
        scale="smoke",
        overrides={**TINY, "runs": "efficientnet_lite0:frozen"},
        device="cpu",
        runs_root=tmp_path / "runs",
        verbose=False,
    )
    assert "3 hit(s), 0 miss(es)" in (path2 / "report.html").read_text()


def test_transfer_epochs_run_on_across_phases_and_user_settings_reach_every_stage(tmp_path, monkeypatch):
    """The fine-tuned run's curve has one point per epoch, numbered 1..N across its unfreeze phases, and the
    user's train.* / head_train.* settings are what each stage trained with (recorded in config.json)."""
    monkeypatch.setenv("TORCHDOJO_FEATURE_CACHE", str(tmp_path / "cache"))
    plotted: dict[str, list[dict]] = {}
    curves = transfer.figures.curves

    def spy(histories, path, **kw):  # noqa: ANN001, ANN003, ANN202 - records what each curve is drawn from
        plotted.update(histories)
        return curves(histories, path, **kw)

    monkeypatch.setattr(transfer.figures, "curves", spy)
    overrides = {
        **TINY,
        "runs": "efficientnet_lite0:frozen,efficientnet_lite0:finetune,logreg",
        "train.lr": "0.00037",
        "head_train.lr": "0.0021",
        "train.epochs": 2,
        "head_train.epochs": 2,
    }
    path = run_experiment(
        transfer, scale="smoke", overrides=overrides, device="cpu", runs_root=tmp_path / "runs", verbose=False
    )
    stages = json.loads((path / "config.json").read_text())["stages"]
    assert set(stages) == {
        "efficientnet_lite0_frozen",
        "efficientnet_lite0_finetune_p1",
        "efficientnet_lite0_finetune_p2",
        "logreg",
    }
    for stage in ("efficientnet_lite0_finetune_p1", "efficientnet_lite0_finetune_p2"):
        assert stages[stage]["lr"] == 0.00037 and stages[stage]["epochs"] == 2  # each phase: the user's schedule
    for stage in ("efficientnet_lite0_frozen", "logreg"):  # the head and the cheap baseline: head_train
        assert stages[stage]["lr"] == 0.0021 and stages[stage]["epochs"] == 2
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["stage"].startswith("efficientnet_lite0_finetune")] == [1, 2, 1, 2]
    assert [r["epoch"] for r in plotted["efficientnet_lite0:finetune"]] == [1, 2, 3, 4]  # one point per epoch
    assert [r["epoch"] for r in plotted["logreg"]] == [1, 2]
    summary = json.loads((path / "summary.json").read_text())["runs"]["efficientnet_lite0:finetune"]
    assert 3 <= summary["best_epoch"] <= 4  # counted across phases: the last phase's best


def test_transfer_history_numbers_epochs_across_phases(monkeypatch):
    """train_phases: epochs 1..N over the phases (the curves were a vertical line: every row had one epoch)."""
    from torchdojo.engine import FitResult

    calls = []

    def fake_fit(model, train, val, tcfg, *, stage, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(stage)
        hist = [{"stage": stage, "epoch": e, "train_loss": 1.0 / e} for e in range(1, tcfg.epochs + 1)]
        return FitResult(hist, best_epoch=2, best_value=0.5, seconds_per_epoch=0.1)

    monkeypatch.setattr(transfer, "fit", fake_fit)
    monkeypatch.setattr(transfer, "unfreeze_top", lambda model, fraction: 1)
    monkeypatch.setattr(transfer, "trainable_params", lambda model, mult, lr: [])
    cfg = build_config(transfer, "smoke", overrides=["unfreeze_phases=3", "train.epochs=3"])

    class Ctx:
        device, run, resume, verbose = torch.device("cpu"), None, False, False

    result, notes = transfer.train_phases(
        torch.nn.Linear(1, 1), "bb_finetune", "finetune", [], [], cfg.train, cfg, Ctx()
    )
    assert calls == ["bb_finetune_p1", "bb_finetune_p2", "bb_finetune_p3"] and len(notes) == 3
    assert [r["epoch"] for r in result.history] == list(range(1, 10))
    assert result.best_epoch == 6 + 2
    result, _ = transfer.train_phases(torch.nn.Linear(1, 1), "small-resnet", None, [], [], cfg.train, cfg, Ctx())
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_transfer_refuses_unused_and_removed_settings():
    with pytest.raises(DojoError, match="head_train.cpu_fusion"):
        build_config(transfer, "smoke", overrides=["head_train.cpu_fusion=false"])
    with pytest.raises(DojoError, match="unknown config key 'channels_last'"):  # one knob: train.channels_last
        build_config(transfer, "smoke", overrides=["channels_last=false"])


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
