"""The metric-learning experiment (E1-E4): E2's frozen extractor, a smoke run end to end, config errors."""

import json
from pathlib import Path

import pytest
import torch

from torchdojo.config import TrainConfig
from torchdojo.data import load_dataset
from torchdojo.errors import DojoError
from torchdojo.experiments import EXPERIMENTS, metric_learning
from torchdojo.experiments.base import build_config, run_experiment
from torchdojo.metric.model import MetricCNN
from torchdojo.metric.regimes import Setup, fit_head_frozen
from torchdojo.runs import load_checkpoint


def _digits_setup() -> Setup:
    d = load_dataset("digits", classes=["3", "8"])
    mean, std = d.mean_std()
    return Setup(d.train, d.test, mean, std, torch.device("cpu"), seed=0, verbose=False)


def test_e2_head_stage_leaves_the_extractor_unchanged() -> None:
    setup = _digits_setup()
    torch.manual_seed(0)
    model = MetricCNN((1, 8, 8), 2, channels=(8, 16), embedding_dim=8)
    features_before = {k: v.clone() for k, v in model.features.state_dict().items()}  # weights and BN stats
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    tcfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    hist = fit_head_frozen(
        model, setup.batches(setup.train, 32, True), setup.batches(setup.val, 256, False), tcfg, setup
    )
    assert len(hist) == 2 and hist[-1]["val_acc"] > 0.5
    for k, v in model.features.state_dict().items():
        assert torch.equal(v, features_before[k]), f"extractor tensor {k} changed in the FC stage"
    assert all(not p.requires_grad for p in model.features.parameters())
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items()), "head must learn"


def _run(tmp_path: Path, **overrides: object) -> Path:
    return run_experiment(
        metric_learning, scale="smoke", overrides=dict(overrides), device="cpu", runs_root=tmp_path, verbose=False
    )


def test_smoke_run_end_to_end(tmp_path: Path) -> None:
    try:
        load_dataset("fashion-mnist")
        over: dict[str, object] = {}
    except DojoError:  # offline without Fashion-MNIST: the same code path on sklearn's digits
        over = {"dataset": "digits", "classes": "3,8"}
    path = _run(tmp_path, **over)
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary["regimes"]) == {"e1", "e2", "e4"}
    for name, r in summary["regimes"].items():
        assert 0 <= r["test_acc"] <= 1 and 0 <= r["knn_test_acc"] <= 1, name
        assert set(r["separability"]) == {"block1", "block2", "embedding"}
        assert all(v["fisher"] >= 0 for v in r["separability"].values())
        for layer in ("block1", "block2"):
            assert (path / "figures" / f"fmap_{name}_{layer}.png").stat().st_size > 0
        assert (path / "figures" / f"embedding_{name}.png").exists()
        assert (path / "figures" / f"curves_{name}.png").exists()
    stages = {json.loads(line)["stage"] for line in (path / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"e1", "e2-triplet", "e2-head", "e4"}
    # E2 end to end: the head stage's best model carries exactly the triplet stage's extractor
    trip = load_checkpoint(path / "checkpoints" / "e2-triplet" / "best.pt")["model"]
    head = load_checkpoint(path / "checkpoints" / "e2-head" / "best.pt")["model"]
    for k, v in trip.items():
        if k.startswith("features."):
            assert torch.equal(v, head[k]), k
    html = (path / "report.html").read_text()
    for text in ("E3. The regimes side by side", "Fisher", "kNN", "feature maps"):
        assert text in html


def test_batch_hard_with_pml_runs(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_metric_learning")
    path = _run(
        tmp_path,
        dataset="digits",
        classes="0,1",
        regimes="e4",
        miner="batch-hard",
        miner_impl="pml",
        feature_map_epochs="2",
    )
    summary = json.loads((path / "summary.json").read_text())
    assert list(summary["regimes"]) == ["e4"]


def test_config_validation_and_presets() -> None:
    assert "metric-learning" in EXPERIMENTS.names()
    with pytest.raises(DojoError, match="unknown regime"):
        build_config(metric_learning, "smoke", overrides=["regimes=e1,e3"])
    with pytest.raises(DojoError, match="miner"):
        build_config(metric_learning, "smoke", overrides=["miner=hardest"])
    with pytest.raises(DojoError, match="margin"):
        build_config(metric_learning, "smoke", overrides=["margin=0"])
    cfg = build_config(metric_learning, "small", preset="cifar10")
    assert cfg.dataset == "cifar10" and cfg.classes == ("airplane", "automobile")
    assert build_config(metric_learning, "small").classes == ("T-shirt/top", "Shirt")


def _fake_cifar(folder: Path, per_batch: int = 40) -> None:
    """CIFAR-10's python pickles in their published layout, with random images (for the preset's path)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    folder.mkdir(parents=True)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)


def test_cifar10_preset_on_a_format_faithful_fixture_and_resume(tmp_path: Path) -> None:
    _fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    path = run_experiment(
        metric_learning,
        scale="smoke",
        preset="cifar10",
        overrides={"regimes": "e2"},
        device="cpu",
        data_dir=tmp_path / "data",
        verify=False,
        runs_root=tmp_path / "runs",
        verbose=False,
    )
    summary = json.loads((path / "summary.json").read_text())
    assert summary["classes"] == ["airplane", "automobile"]
    assert (path / "figures" / "fmap_e2_block1.png").exists()
    # resuming a finished run redoes no epoch and reproduces the same numbers and per-epoch tables
    monitor_rows = torch.load(path / "checkpoints" / "monitor-e2" / "state.pt", weights_only=True)["rows"]
    again = run_experiment(
        metric_learning, resume=path, device="cpu", data_dir=tmp_path / "data", verify=False, verbose=False
    )
    assert again == path
    resumed = json.loads((path / "summary.json").read_text())
    assert resumed["regimes"]["e2"]["test_acc"] == summary["regimes"]["e2"]["test_acc"]
    after = torch.load(path / "checkpoints" / "monitor-e2" / "state.pt", weights_only=True)["rows"]
    assert [r["epoch"] for r in after] == [r["epoch"] for r in monitor_rows] == [0, 1, 2]


def test_zoo_backbone_option_runs_with_its_preprocessing(tmp_path: Path) -> None:
    pytest.importorskip("torchdojo.backbones")
    path = _run(
        tmp_path,
        dataset="digits",
        classes="3,8",
        regimes="e2",
        backbone="resnet18",
        pretrained="false",
        image_size=32,
        feature_map_channels=2,
    )
    summary = json.loads((path / "summary.json").read_text())
    sep = summary["regimes"]["e2"]["separability"]
    assert "embedding" in sep and len(sep) >= 3  # generic main layers: evenly spaced convs of the trunk
    assert any(p.name.startswith("fmap_e2_conv") for p in (path / "figures").iterdir())


def test_miner_choices_are_literals_checked_centrally() -> None:
    from typing import get_args, get_type_hints

    from torchdojo.metric.miners import MINERS

    hints = get_type_hints(metric_learning.Config)
    assert set(get_args(hints["miner"])) == set(MINERS)  # one list of miners
    with pytest.raises(DojoError, match="bad value 'hardest' for miner"):
        build_config(metric_learning, "smoke", overrides=["miner=hardest"])
    with pytest.raises(DojoError, match="bad value 'faiss' for miner_impl"):
        build_config(metric_learning, "smoke", overrides=["miner_impl=faiss"])
    with pytest.raises(DojoError, match="train.label_smoothing is not used"):
        build_config(metric_learning, "smoke", overrides=["train.label_smoothing=0.1"])


def test_stage_configs_user_settings_win_over_the_head_stage_defaults(tmp_path: Path) -> None:
    """E2's head stage trains with the `head` group, its triplet stage with `train`: each as the user set it."""
    common = {"dataset": "digits", "classes": "3,8", "regimes": "e2", "feature_map_epochs": "1"}
    path = _run(tmp_path / "a", **common)
    stages = json.loads((path / "config.json").read_text())["stages"]
    assert (stages["e2-head"]["lr"], stages["e2-head"]["weight_decay"]) == (1e-2, 0)  # the head group's defaults
    assert stages["e2-triplet"]["lr"] == 2e-3 and stages["e2-triplet"]["epochs"] == 2  # the train group
    overrides = {"train.lr": 0.0031, "train.epochs": 1, "head.lr": 0.02, "head.epochs": 2, "head.weight_decay": 0.01}
    path = _run(tmp_path / "b", **common, **overrides)
    stages = json.loads((path / "config.json").read_text())["stages"]
    assert (stages["e2-triplet"]["lr"], stages["e2-triplet"]["epochs"]) == (0.0031, 1)
    assert (stages["e2-head"]["lr"], stages["e2-head"]["epochs"], stages["e2-head"]["weight_decay"]) == (0.02, 2, 0.01)
    hp = [
        b
        for b in json.loads((path / "report.json").read_text())["blocks"]
        if b["type"] == "table" and "stage" in b["columns"]
    ]
    assert hp and {r[hp[0]["columns"].index("lr")] for r in hp[0]["rows"]} == {0.0031, 0.02}  # as resolved
