"""The training engine on scikit-learn digits with tiny models: checkpoints, best-weight restore,
early stopping, divergence, schedules, gradient clipping and restricted optimizer parameters."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchdojo.config import TrainConfig
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import cross_entropy, evaluate, fit, load_best, train_one_epoch
from torchdojo.errors import CheckpointError, TrainingDiverged
from torchdojo.models import build_model
from torchdojo.optim import build_optimizer
from torchdojo.runs import Run, atomic_torch_save, load_checkpoint

CPU = torch.device("cpu")
MEAN, STD = (0.3,), (0.4,)


@pytest.fixture
def loaders(digits):
    train = TensorBatches(digits.train, 128, MEAN, STD, shuffle=True, seed=0)
    val = TensorBatches(digits.test, 512, MEAN, STD)
    return train, val


class EpochLabels:
    """Wraps batches; outside `good` epochs the labels are shifted by one, so accuracy collapses to ~0.
    This makes the best validation epoch known in advance."""

    def __init__(self, inner: TensorBatches, good: set[int]):
        self.inner, self.good, self.epoch = inner, good, 0

    def set_epoch(self, e: int) -> None:
        self.epoch = e
        self.inner.set_epoch(e)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for x, y in self.inner:
            yield x, (y if self.epoch in self.good else (y + 1) % 10)


class NaNFrom(EpochLabels):
    """Inputs become NaN from epoch `start` on: the loss diverges there."""

    def __init__(self, inner: TensorBatches, start: int):
        super().__init__(inner, set())
        self.start = start

    def __iter__(self):
        for x, y in self.inner:
            yield (x * float("nan") if self.epoch >= self.start else x), y


def _model(kind: str = "logreg") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(kind, (1, 8, 8), 10)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 128, "lr": 0.05, **kw})


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def _snapshots() -> tuple[dict[int, dict], callable]:
    states: dict[int, dict] = {}

    def cb(epoch, row, model):
        states[epoch] = copy.deepcopy(model.state_dict())

    return states, cb


def test_fit_learns_and_writes_checkpoints_atomically(tmp_path, loaders):
    train, val = loaders
    run = Run(tmp_path / "run")
    model = _model()
    res = fit(model, train, val, _cfg(), device=CPU, run=run, verbose=False)
    run.close()
    assert [r["epoch"] for r in res.history] == [1, 2, 3] and res.seconds_per_epoch > 0
    assert res.history[-1]["val_acc"] > 0.85  # logistic regression on digits
    ckpt = tmp_path / "run" / "checkpoints" / "main"
    last, best = load_checkpoint(ckpt / "last.pt"), load_checkpoint(ckpt / "best.pt")
    assert last["epoch"] == 3 and len(last["history"]) == 3 and {"optimizer", "scheduler", "rng_cpu"} <= set(last)
    assert best["epoch"] == res.best_epoch
    assert not _tmp_files(tmp_path)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize("with_run", [True, False], ids=["checkpoint", "in-memory"])
def test_best_weights_are_restored(tmp_path, loaders, with_run):
    train, val = loaders
    states, cb = _snapshots()
    run = Run(tmp_path / "run") if with_run else None
    model = _model()
    res = fit(
        model,
        train,
        EpochLabels(val, good={2}),
        _cfg(epochs=4),
        device=CPU,
        run=run,
        callbacks=[cb],
        verbose=False,
    )
    assert res.best_epoch == 2 and res.best_value == res.history[1]["val_acc"] > 0.5
    assert all(r["val_acc"] < 0.3 for r in res.history if r["epoch"] != 2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[2][k]), k
    assert not torch.equal(model.state_dict()["head.0.weight"], states[4]["head.0.weight"])
    if with_run:
        other = _model()
        assert load_best(other, tmp_path / "run", "main")["epoch"] == 2
        assert torch.equal(other.state_dict()["head.0.weight"], states[2]["head.0.weight"])


def test_monitor_val_loss(loaders):
    train, val = loaders
    res = fit(_model(), train, EpochLabels(val, good={3}), _cfg(monitor="val_loss"), device=CPU, verbose=False)
    assert res.best_epoch == 3 and res.best_value == min(r["val_loss"] for r in res.history)


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_stops(loaders, patience):
    train, val = loaders
    res = fit(
        _model(),
        train,
        EpochLabels(val, good={1}),
        _cfg(epochs=6, early_stop_patience=patience),
        device=CPU,
        verbose=False,
    )
    assert res.stopped_early and len(res.history) == 1 + patience and res.best_epoch == 1


def test_no_early_stop_while_improving(loaders):
    train, val = loaders
    res = fit(_model(), train, val, _cfg(epochs=3, early_stop_patience=1, lr=0.01), device=CPU, verbose=False)
    assert not res.stopped_early and len(res.history) == 3


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(tmp_path, loaders):
    train, val = loaders
    run = Run(tmp_path / "run")
    fit(_model(), NaNFrom(train, start=2), val, _cfg(epochs=1), device=CPU, run=run, verbose=False)
    ckpt = tmp_path / "run" / "checkpoints" / "main"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert set(before) == {"best.pt", "last.pt"}
    model = _model()
    with pytest.raises(TrainingDiverged) as e:  # resumed: epoch 2 diverges
        fit(
            model,
            NaNFrom(train, start=2),
            val,
            _cfg(epochs=3),
            device=CPU,
            run=run,
            resume=True,
            verbose=False,
        )
    assert "epoch 2" in e.value.problem and "epoch 1" in e.value.problem and str(ckpt) in e.value.problem
    assert "train.lr" in e.value.fix and e.value.exit_code != 0
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # byte for byte
    state = load_checkpoint(ckpt / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not _tmp_files(tmp_path)


def test_nan_in_a_fresh_run(loaders):
    train, val = loaders
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        fit(_model(), NaNFrom(train, start=1), val, _cfg(), device=CPU, verbose=False)


@pytest.mark.parametrize("schedule,end_factor", [("none", 1.0), ("cosine", 0.0), ("onecycle", 0.0), ("step", 0.01)])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_schedules_label_smoothing_and_grad_clip_run(loaders, schedule, end_factor, optimizer):
    train, val = loaders
    cfg = _cfg(
        epochs=2,
        schedule=schedule,
        warmup_epochs=0.5,
        label_smoothing=0.1,
        grad_clip=1.0,
        optimizer=optimizer,
        lr=0.02,
        weight_decay=1e-4,
        max_batches=5,
    )
    res = fit(_model(), train, val, cfg, device=CPU, verbose=False)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in res.history)
    assert res.history[-1]["lr"] == pytest.approx(cfg.lr * end_factor, abs=1e-9)


def test_warmup_and_schedule_shape():
    from torchdojo.optim import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    cfg = _cfg(epochs=4, schedule="cosine", warmup_epochs=1, lr=1.0)
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # then decreasing
    assert lrs[-1] < 0.01


def test_label_smoothing_is_used(loaders):
    train, _ = loaders
    model = _model()
    x, y = next(iter(train))
    plain, smooth = cross_entropy(0.0)(model, x, y)[0], cross_entropy(0.3)(model, x, y)[0]
    assert torch.allclose(smooth, F.cross_entropy(model(x), y, label_smoothing=0.3))
    assert not torch.allclose(plain, smooth)


def test_grad_clip_bounds_the_update(loaders):
    train, _ = loaders
    cfg = _cfg(optimizer="sgd", momentum=0.0, lr=1.0)

    def update_norm(clip: float) -> float:
        model = _model()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        opt = build_optimizer(model.parameters(), cfg)
        out = train_one_epoch(
            model, train.set_epoch(1), opt, cross_entropy(), device=CPU, grad_clip=clip, max_batches=1
        )
        assert out["n"] == 128
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return (after - before).norm().item()

    assert update_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)  # plain SGD, lr 1: the step is the clipped grad
    assert update_norm(0.0) > 0.01


def test_optimizer_gets_only_the_given_params(loaders):
    train, val = loaders
    model = _model("cnn")
    features = copy.deepcopy(model.features.state_dict())
    head = copy.deepcopy(model.head.state_dict())
    cfg = _cfg(epochs=1, optimizer="adamw", weight_decay=0.1, max_batches=3)
    fit(model, train, val, cfg, device=CPU, params=list(model.head.parameters()), verbose=False)
    for k, v in model.features.state_dict().items():
        if "running" not in k and "num_batches" not in k:  # batch-norm statistics are buffers, not params
            assert torch.equal(v, features[k]), k
    assert not torch.equal(model.head.state_dict()["0.weight"], head["0.weight"])


def test_frozen_params_are_left_out_by_default(loaders):
    train, val = loaders
    model = _model("mlp")
    for p in model.features.parameters():
        p.requires_grad_(False)
    frozen = [p.detach().clone() for p in model.features.parameters()]
    fit(
        model,
        train,
        val,
        _cfg(epochs=1, optimizer="adamw", weight_decay=0.1, max_batches=3),
        device=CPU,
        verbose=False,
    )
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.features.parameters(), strict=True))


def test_evaluate_outputs(loaders):
    _, val = loaders
    model = _model()
    out = evaluate(model, val, device=CPU, return_outputs=True)
    n = len(val.data)
    assert out["n"] == n and out["probs"].shape == (n, 10) and out["targets"].shape == (n,)
    assert torch.allclose(out["probs"].sum(1), torch.ones(n), atol=1e-5)
    assert out["acc"] == pytest.approx((out["probs"].argmax(1) == out["targets"]).float().mean().item())
    assert evaluate(model, val, device=CPU, max_batches=1)["n"] == 359  # one eval batch of 512 > 359 images


def test_atomic_save_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    atomic_torch_save({"epoch": 1}, path)
    old = path.read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"epoch": 2}, path)
    assert path.read_bytes() == old and [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"model": {"w": torch.randn(100, 100)}, "epoch": 3}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in e.value.problem and "truncated or corrupt" in e.value.problem
    assert "--resume" in e.value.fix
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
