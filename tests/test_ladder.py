"""The ladder experiment: its report has every item C1-C4 asks for; the cifar10 preset runs C4's ablation."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import cifar_batch

from torchdojo.experiments import ladder
from torchdojo.experiments.base import build_config, run_experiment

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar(folder: Path, per_batch: int = 20) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        (folder / name).write_bytes(cifar_batch(imgs, [i % 10 for i in range(per_batch)]))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))


def test_report_shows_every_ladder_item(smoke_runs: list[Path]) -> None:
    run = smoke_runs[0]
    doc = json.loads((run / "report.json").read_text())
    figs = {b["path"] for b in doc["blocks"] if b["type"] == "figure"}
    assert {"c1_grid.png", "c1_random.png", "c2_augment.png"} <= figs
    for rung in ("logreg", "mlp"):
        assert {f"curves_{rung}.png", f"cm_{rung}.png"} <= figs
        tables = [b for b in doc["blocks"] if b["type"] == "table" and b["caption"].startswith(rung)]
        assert len(tables) == 2, "an accuracy/loss table and a hyper-parameter table per rung"
        splits = [row[0] for row in tables[0]["rows"]]
        assert splits == ["train", "val", "test"]
    assert all((run / "figures" / f).exists() for f in figs)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["rungs"]) == {"logreg", "mlp"}


def test_cifar10_preset_is_c4_ablation_and_runs_on_real_format(tmp_path: Path, data_env: dict) -> None:
    cfg = build_config(ladder, "full", "cifar10")
    assert cfg.dataset == "cifar10" and cfg.rungs == ("baseline", "improved", "improved-bn", "improved-bn-dropout")
    assert cfg.train.epochs <= 30
    _write_cifar(data_env["data_dir"] / "cifar-10-batches-py")
    run = run_experiment(
        ladder,
        scale="smoke",
        preset="cifar10",
        device="cpu",
        data_dir=data_env["data_dir"],
        verify=False,
        runs_root=tmp_path,
        verbose=False,
        overrides=["train_subset=0", "train.max_batches=2"],
    )
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["rungs"]) == list(cfg.rungs)
    assert summary["rungs"]["baseline"]["params"] == 32 * 3 * 5 * 5 + 32 + 32 * 14 * 14 * 10 + 10


def test_unknown_rung_is_rejected() -> None:
    from torchdojo.errors import DojoError

    with pytest.raises(DojoError, match="unknown rung"):
        build_config(ladder, "smoke", None, ["rungs=logreg,nope"])


def test_resume_refuses_changed_settings_and_keeps_the_record(smoke_runs: list[Path], tmp_path: Path) -> None:
    import shutil

    from torchdojo.errors import DojoError

    run = tmp_path / "copy"
    shutil.copytree(smoke_runs[1], run)
    before = (run / "config.json").read_bytes()
    with pytest.raises(DojoError, match="cannot change it"):
        run_experiment(ladder, resume=run, overrides=["train.lr=0.5"], device="cpu", verbose=False)
    with pytest.raises(DojoError, match="cannot change it"):
        run_experiment(ladder, resume=run, scale="full", device="cpu", verbose=False)
    run_experiment(ladder, resume=run, device="cpu", verbose=False)  # same settings: fine
    assert (run / "config.json").read_bytes() == before


def test_a_run_that_fails_before_producing_anything_leaves_no_folder(tmp_path: Path, data_env: dict) -> None:
    from torchdojo.errors import DataMissingError

    with pytest.raises(DataMissingError):
        run_experiment(
            ladder,
            scale="smoke",
            overrides=["dataset=cifar10"],
            data_dir=data_env["data_dir"],
            device="cpu",
            runs_root=tmp_path / "runs",
            verbose=False,
        )
    assert not list((tmp_path / "runs").rglob("config.json"))
