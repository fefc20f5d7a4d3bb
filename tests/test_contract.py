"""What you set is what runs: a test generated from the registries.

For every experiment, every `TrainConfig` group of its Config (`train`, and e.g. `clf`, `head_train`) and every
field of it: a distinctive value either reaches what each stage trains with, or is refused with a DojoError
before anything runs (the experiment's `UNUSED`). "Reaches" is checked where the engine uses it: the config that
`fit` received (recorded in config.json's `stages` too), the optimizer's param groups, the scheduler, the size
and number of batches each epoch draws and the number of epochs. Stages sized by an experiment's own fields
(its `OWN_STAGES`, e.g. a full-batch overfit demo) are exempt from the group settings but still train through
`fit`. And every field of an experiment's own Config is read while it runs at smoke scale.
"""

import dataclasses
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from torchdojo import engine, epochs
from torchdojo.config import TrainConfig
from torchdojo.errors import DojoError
from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments import base as experiments_base
from torchdojo.experiments.base import build_config, run_experiment
from torchdojo.steps import batch_len

# A distinctive, valid value for every TrainConfig field (none is a default of any experiment's group; batch
# sizes are multiples of 3 so that triplet batches, whole triplets, have them too).
DISTINCT: dict[str, Any] = {
    "epochs": 2,
    "batch_size": 24,
    "eval_batch_size": 42,
    "optimizer": "sgd",
    "lr": 0.0123,
    "momentum": 0.77,
    "weight_decay": 0.00123,
    "schedule": "step",
    "warmup_epochs": 0.5,
    "label_smoothing": 0.05,
    "grad_clip": 0.75,
    "early_stop_patience": 5,
    "monitor": "val_loss",
    "max_batches": 2,
    "channels_last": False,
    "amp": False,
    "cpu_fusion": False,
}
# torch.compile costs 10-30 s per stage on this CPU; `fit` compiling the step is tested in test_engine.py.
NOT_RUN = {"compile": True}
# Experiments whose smoke run needs more than the embedded data; they are covered by their own tests.
SMOKE_OVERRIDES: dict[str, dict[str, Any]] = {}


def test_every_train_config_field_is_covered() -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert names == set(DISTINCT) | set(NOT_RUN), "give a new TrainConfig field a distinctive value here"


def _groups(module: Any) -> list[str]:
    cfg = module.Config()
    return [f.name for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), TrainConfig)]


def _cases() -> list[tuple[str, str, str]]:
    return [
        (name, group, field)
        for name in EXPERIMENTS.names()
        for group in _groups(EXPERIMENTS.get(name))
        for field in [*DISTINCT, *NOT_RUN]
    ]


@pytest.mark.parametrize(("experiment", "group", "field"), _cases())
def test_unused_settings_are_refused_before_anything_runs(experiment: str, group: str, field: str) -> None:
    module = EXPERIMENTS.get(experiment)
    key = f"{group}.{field}"
    value = {**DISTINCT, **NOT_RUN}[field]
    unused = getattr(module, "UNUSED", {})
    if key in unused:
        with pytest.raises(DojoError, match=f"{key}.*not used by experiment {experiment}"):
            build_config(module, "smoke", overrides={key: value})
    else:
        cfg = build_config(module, "smoke", overrides={key: value})
        assert getattr(getattr(cfg, group), field) == value


class _Recorder:
    """Stands in for engine._audit and wraps the epoch loops: what each stage really trained with."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.current: str | None = None

    def audit(self, stage: str, cfg: TrainConfig, optimizer: Any, scheduler: Any, train: Any, val: Any) -> None:
        self.current = stage
        self.stages[stage] = {
            "cfg": cfg,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "epochs": 0,
            "train_batches": [],
            "val_batches": [],
            "train_len": len(train),
            "val_len": len(val) if val is not None else 0,
        }

    def counting(self, batches: Any, key: str) -> Any:
        record = self.stages[self.current][key] if self.current in self.stages else []
        sizes: list[int] = []
        record.append(sizes)
        for batch in batches:
            sizes.append(batch_len(batch))
            yield batch


def _run_instrumented(
    module: Any, overrides: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[_Recorder, set[str], Path]:
    rec, reads = _Recorder(), set()
    train_epoch, evaluate = epochs._train_one_epoch, epochs._evaluate

    def train_one(model, batches, *args, **kw):  # noqa: ANN001, ANN202
        if rec.current in rec.stages:
            rec.stages[rec.current]["epochs"] += 1
        return train_epoch(model, rec.counting(batches, "train_batches"), *args, **kw)

    def evaluate_one(model, batches, *args, **kw):  # noqa: ANN001, ANN202
        return evaluate(model, rec.counting(batches, "val_batches"), *args, **kw)

    monkeypatch.setattr(engine, "_audit", rec.audit)
    monkeypatch.setattr(epochs, "_train_one_epoch", train_one)
    build, original_run = experiments_base.build_config, module.run

    def tracked_build(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        return _tracked(build(*args, **kw), reads)

    def tracked_run(cfg, ctx):  # noqa: ANN001, ANN202
        reads.clear()  # what config.json's writing read does not count: only what the experiment reads
        monkeypatch.setattr(epochs, "_evaluate", evaluate_one)  # validation passes inside fit, and after
        return original_run(cfg, ctx)

    monkeypatch.setattr(experiments_base, "build_config", tracked_build)
    monkeypatch.setattr(module, "run", tracked_run)
    path = run_experiment(module, scale="smoke", overrides=overrides, runs_root=tmp_path, device="cpu", verbose=False)
    return rec, reads, path


def _tracked(cfg: Any, reads: set[str]) -> Any:
    """`cfg` as an instance of a subclass that notes every field read."""
    cls = type(cfg)
    names = {f.name for f in dataclasses.fields(cfg)}

    def getattribute(self, name):  # noqa: ANN001, ANN202
        if name in names:
            reads.add(name)
        return object.__getattribute__(self, name)

    tracked_cls = type(f"Tracked{cls.__name__}", (cls,), {"__getattribute__": getattribute})
    obj = object.__new__(tracked_cls)
    obj.__dict__.update(cfg.__dict__)
    return obj


def _own_stage(module: Any, stage: str) -> bool:
    return any(fnmatch.fnmatch(stage, pattern) for pattern in getattr(module, "OWN_STAGES", {}))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS.names())
def test_every_setting_reaches_what_runs(experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = EXPERIMENTS.get(experiment)
    unused = getattr(module, "UNUSED", {})
    asked = {f"{g}.{k}": v for g in _groups(module) for k, v in DISTINCT.items() if f"{g}.{k}" not in unused}
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    rec, reads, path = _run_instrumented(
        module, {**asked, **SMOKE_OVERRIDES.get(experiment, {})}, tmp_path, monkeypatch
    )

    # Every own field of the Config is read while the experiment runs (one that is never read cannot matter).
    own = {f.name for f in dataclasses.fields(module.Config)} - set(_groups(module))
    assert not own - reads, f"{experiment}: fields never read by its run: {sorted(own - reads)}"
    if not _groups(module):
        assert not rec.stages, f"{experiment} trains stages but has no TrainConfig group a user can set"
        return
    assert rec.stages, f"{experiment} has a TrainConfig group but no stage trained through fit"
    recorded = json.loads((path / "config.json").read_text())["stages"]
    for stage, got in rec.stages.items():
        cfg: TrainConfig = got["cfg"]
        assert recorded[stage] == dataclasses.asdict(cfg), f"{stage}: config.json records what fit used"
        if _own_stage(module, stage):
            continue
        # the stage belongs to the group whose every setting it carries; it must carry all of one group's
        mismatch = {
            g: [f for f in DISTINCT if f"{g}.{f}" in asked and getattr(cfg, f) != asked[f"{g}.{f}"]]
            for g in _groups(module)
        }
        assert min(map(len, mismatch.values())) == 0, f"{experiment}/{stage} ignores settings: {mismatch}"
        _check_optimizer(experiment, stage, got["optimizer"])
        assert got["epochs"] == 2, f"{experiment}/{stage}: train.epochs=2, trained {got['epochs']}"
        for sizes in got["train_batches"]:
            assert len(sizes) == min(2, got["train_len"]), f"{stage}: max_batches=2 batches per epoch"
            assert sizes[0] == 24 or got["train_len"] == 1, f"{stage}: batch_size 24, got {sizes[0]}"
        for sizes in got["val_batches"]:
            assert sizes[0] == 42 or len(sizes) == 1, f"{stage}: eval_batch_size 42, got {sizes[0]}"


def _check_optimizer(experiment: str, stage: str, optimizer: torch.optim.Optimizer) -> None:
    where = f"{experiment}/{stage}"
    assert isinstance(optimizer, torch.optim.SGD), f"{where}: optimizer {type(optimizer).__name__}"
    lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    assert pytest.approx(0.0123) in lrs, f"{where}: no param group at lr 0.0123: {lrs}"
    assert all(g["momentum"] == 0.77 for g in optimizer.param_groups), where
    assert any(g["weight_decay"] == 0.00123 for g in optimizer.param_groups), where


def test_library_calls_leave_the_process_as_they_found_it() -> None:
    """`import torchdojo` and a `fit` change no environment variable, no global torch flag and not the
    allocator (glibc mallopt is the CLI's choice): what a notebook had before, it has after."""
    code = """
import os, subprocess, torch
env, flags = dict(os.environ), (torch.backends.cudnn.benchmark, torch.get_num_threads())
import torchdojo, torchdojo.experiments
from torchdojo.config import TrainConfig
from torchdojo.data import load_dataset
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import fit, keep_freed_memory
from torchdojo.models import build_model
data = load_dataset("digits")
batches = TensorBatches(data.train, 64, *data.mean_std(), shuffle=True)
fit(build_model("cnn", data.train.shape, 10), batches, batches, TrainConfig(epochs=1, max_batches=2),
    device=torch.device("cpu"), verbose=False)
# set by torch's inductor and scikit-learn on import (not by torchdojo): KMP_*, TORCHINDUCTOR_CACHE_DIR
changed = {k for k, _ in set(os.environ.items()) ^ set(env.items()) if not k.startswith(("KMP_", "TORCHINDUCTOR_"))}
assert not changed, changed
assert (torch.backends.cudnn.benchmark, torch.get_num_threads()) == flags
assert keep_freed_memory.cache_info().currsize == 0, "fit tuned the process allocator"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
