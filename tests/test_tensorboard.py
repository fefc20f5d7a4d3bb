"""TensorBoard as written by a run: one TensorBoard run per stage, figures as images, hparams per stage with its
metrics, test metrics, and no epoch twice after a resume. Read back with TensorBoard's own EventAccumulator."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from torchdojo import engine, tensorboard_log  # noqa: E402
from torchdojo.experiments import ladder  # noqa: E402
from torchdojo.experiments.base import run_experiment  # noqa: E402
from torchdojo.loop import _better  # noqa: E402
from torchdojo.runs import read_metrics  # noqa: E402

SETTINGS = ["dataset=digits", "rungs=logreg,mlp", "train.epochs=3", "train.max_batches=2", "train_subset=256"]


def _run(root: Path, resume: Path | None = None) -> Path:
    overrides = None if resume else SETTINGS
    return run_experiment(
        ladder, scale="smoke", overrides=overrides, device="cpu", runs_root=root, resume=resume, verbose=False
    )


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _hparams(acc: EventAccumulator) -> dict:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("runs"))


def test_one_tensorboard_run_per_stage_with_its_epochs(finished):
    tb = finished / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == ["figures", "logreg", "mlp"]
    assert not (finished / "tb").exists()
    for stage in ("logreg", "mlp"):
        acc = _events(tb / stage)
        rows = read_metrics(finished, stage)
        for key, tag in (("train_loss", "train/loss"), ("val_acc", "val/acc"), ("lr", "lr")):
            assert _scalars(acc, tag) == [(r["epoch"], pytest.approx(r[key])) for r in rows]


def test_hparams_best_final_and_test_metrics_per_stage(finished):
    stages = json.loads((finished / "config.json").read_text())["stages"]
    summary = json.loads((finished / "summary.json").read_text())
    for stage in ("logreg", "mlp"):
        acc = _events(finished / "tensorboard" / stage)
        rows = read_metrics(finished, stage)
        hp = _hparams(acc)
        assert hp["lr"] == pytest.approx(stages[stage]["lr"]) and hp["optimizer"] == stages[stage]["optimizer"]
        assert hp["schedule"] == stages[stage]["schedule"]
        best = min(rows, key=lambda r: r["val_loss"])  # the default monitor is val_loss
        assert _scalars(acc, "best/val_loss") == [(best["epoch"], pytest.approx(best["val_loss"]))]
        assert _scalars(acc, "best/epoch") == [(best["epoch"], best["epoch"])]
        assert _scalars(acc, "final/val_acc") == [(rows[-1]["epoch"], pytest.approx(rows[-1]["val_acc"]))]
        reported = summary["rungs"][stage]  # what the report says the best epoch scored on the test set
        assert _scalars(acc, "test/acc") == [(best["epoch"], pytest.approx(reported["test_acc"]))]
        assert _scalars(acc, "test/loss") == [(best["epoch"], pytest.approx(reported["test_loss"]))]
        experiment = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
        metric_tags = {
            m.name.tag for m in plugin_data_pb2.HParamsPluginData.FromString(experiment).experiment.metric_infos
        }
        assert {"best/val_loss", "final/val_acc", "test/acc", "test/loss"} <= metric_tags


def test_every_figure_is_an_image(finished):
    acc = _events(finished / "tensorboard" / "figures")
    pngs = {p.stem for p in (finished / "figures").glob("*.png")}
    assert pngs and set(acc.Tags()["images"]) == pngs
    image = acc.Images("cm_logreg")[0]
    assert image.width > 100 and image.height > 100


def test_resume_keeps_each_epoch_once(tmp_path, monkeypatch, finished):
    """Killed after mlp logged epoch 2 (TensorBoard had it) but before its checkpoint: the resume re-runs epoch 2,
    and TensorBoard ends with epochs 1, 2, 3 once each, equal to metrics.jsonl; the end-of-run records once."""
    real_save = engine._Loop.save_last

    class Killed(BaseException):
        pass

    def save_last(loop: engine._Loop, e: int) -> None:
        if loop.stage == "mlp" and e == 2:
            raise Killed
        real_save(loop, e)

    with monkeypatch.context() as m:
        m.setattr(engine._Loop, "save_last", save_last)
        with pytest.raises(Killed):
            _run(tmp_path)
    (run,) = (tmp_path / "ladder").iterdir()
    assert [s for s, _ in _scalars(_events(run / "tensorboard" / "mlp"), "train/loss")] == [1, 2]  # as killed
    _run(tmp_path, resume=run)
    for stage in ("logreg", "mlp"):
        acc = _events(run / "tensorboard" / stage)
        rows = read_metrics(run, stage)
        assert _scalars(acc, "train/loss") == [(r["epoch"], pytest.approx(r["train_loss"])) for r in rows]
        assert [s for s, _ in _scalars(acc, "val/loss")] == [1, 2, 3]
        assert len(_scalars(acc, "test/acc")) == 1
    assert _scalars(_events(run / "tensorboard" / "mlp"), "train/loss") == _scalars(
        _events(finished / "tensorboard" / "mlp"), "train/loss"
    )  # the resumed run's curve is the uninterrupted one's


def test_finish_twice_writes_its_records_once(tmp_path):
    """The end-of-run records are replaced, not added to, when a run finishes again (a resume after a crash
    between TensorBoard and summary.json)."""
    log = tensorboard_log.TensorBoardLog(tmp_path / "tensorboard")
    rows = [{"stage": "a", "epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 / e, "val_acc": 0.1 * e} for e in (1, 2)]
    for r in rows:
        log.epoch(r)
    log.log_test("a", {"acc": 0.5})
    for _ in range(2):
        log.finish(rows, {"a": {"lr": 0.1, "monitor": "val_acc", "milestones": (1, 2), "seed": None}}, [])
    log.close()
    acc = _events(tmp_path / "tensorboard" / "a")
    assert _scalars(acc, "test/acc") == [(2, 0.5)]  # at the best epoch by val_acc
    assert _scalars(acc, "best/val_acc") == [(2, pytest.approx(0.2))]
    assert _hparams(acc) == {"lr": pytest.approx(0.1), "monitor": "val_acc", "milestones": "1,2", "seed": "none"}


def test_names_and_tags():
    assert tensorboard_log.run_name("clf/minilm:frozen") == "clf_minilm_frozen"
    assert tensorboard_log.run_name("..") == "_"
    assert tensorboard_log.tag("train_loss") == "train/loss" and tensorboard_log.tag("lr") == "lr"
    rows = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "val_acc": 0.7}]
    assert tensorboard_log.best_row(rows, "val_acc")["epoch"] == 2  # the first of equals, as fit keeps it
    assert tensorboard_log.best_row([{"epoch": 1, "train_loss": 0.3}], "val_loss")["epoch"] == 1  # no validation


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False).map(lambda v: round(v, 1)), min_size=1, max_size=12),
    monitor=st.sampled_from(["val_loss", "val_acc"]),
)
def test_the_best_row_is_the_epoch_fit_keeps(values, monitor):
    """TensorBoard's best/ metrics name the same epoch as fit's best.pt: the first strictly better value wins."""
    rows = [{"stage": "s", "epoch": e, "train_loss": 1.0, monitor: v} for e, v in enumerate(values, 1)]
    kept, best = None, None
    for r in rows:  # fit's rule (torchdojo.loop._better), epoch by epoch
        if _better(r[monitor], best, monitor):
            kept, best = r["epoch"], r[monitor]
    assert tensorboard_log.best_row(rows, monitor)["epoch"] == kept
