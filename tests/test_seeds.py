"""Repeated runs (`--seeds N`): seed folders, per-seed resume, the aggregate summary and report, refusals."""

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from torchdojo import seeds
from torchdojo.config import TrainConfig
from torchdojo.errors import DojoError
from torchdojo.experiments.base import run_experiment


def _fake_module(name: str = "fake_exp", fail_at: int | None = None) -> types.ModuleType:
    """An experiment in a few lines: regimes a and b, b ahead of a by 2 points on every seed, a per-seed
    spread of several points; c stays at chance. `fail_at`: the run raises for that seed (an interrupted seed)."""
    mod = types.ModuleType(f"torchdojo.experiments.{name}")

    @dataclasses.dataclass
    class Config:
        seed: int = 0
        train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def run(cfg: Any, ctx: Any) -> dict[str, Any]:
        if fail_at is not None and cfg.seed == fail_at:
            ctx.run.metrics.log({"stage": "a", "epoch": 1, "val_acc": 0.5})
            raise KeyboardInterrupt
        spread = [0.0, 0.05, -0.03, 0.02, -0.04, 0.01][cfg.seed % 6]
        acc = {"a": 0.80 + spread, "b": 0.82 + spread + 0.001 * (cfg.seed % 2), "c": 0.10}
        for stage, regime in (("a", "a"), ("b-pre", "b"), ("b-head", "b"), ("c", "c")):
            for epoch in (1, 2):
                ctx.run.metrics.log({"stage": stage, "epoch": epoch, "val_acc": acc[regime] - 0.1 / epoch})
        out = {r: {"test_acc": v, "nested": {"loss": 1 - v}} for r, v in acc.items()}
        out["c"].update(learned=False, learned_reason="final accuracy 10.0% is within noise of the 10.0% rate")
        ctx.report.text(f"seed {cfg.seed}")
        return {"dataset": "none", "regimes": out}

    mod.Config, mod.run, mod.SUMMARY, mod.MISSION_IDS = Config, run, "a fake experiment", ()
    mod.SCALES = {"smoke": {}, "small": {}, "full": {}}
    mod.COMPARE = seeds.SeedSpec(pairs="vs-first")
    sys.modules[mod.__name__] = mod
    return mod


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def test_seeds_run_each_seed_into_its_folder_and_aggregate(tmp_path):
    parent = run_experiment(_fake_module(), seeds=4, runs_root=tmp_path, verbose=False, device="cpu")
    config = _read(parent / "config.json")
    assert config["seeds"] == [0, 1, 2, 3]
    for k in range(4):
        child = _read(parent / "seeds" / f"seed-{k}" / "config.json")
        assert child["config"]["seed"] == k and (parent / "seeds" / f"seed-{k}" / "report.html").exists()
    summary = _read(parent / "summary.json")
    a = summary["regimes"]["a"]["test_acc"]
    assert a["n"] == 4 and a["values"] == pytest.approx([0.80, 0.85, 0.77, 0.82])
    assert a["low"] < a["mean"] < a["high"]
    assert summary["regimes"]["a"]["nested.loss"]["n"] == 4  # nested numbers by dotted key
    assert summary["regimes"]["a"]["learned"] is True
    assert summary["regimes"]["c"]["learned"] is False
    assert "in 4 of 4 seeds" in summary["regimes"]["c"]["learned_reason"]
    verdicts = {(c["a"], c["b"]): c["verdict"] for c in summary["comparisons"]}
    assert verdicts == {("b", "a"): "better", ("c", "a"): "did-not-learn"}  # paired: the spread cancels
    report = _read(parent / "report.json")
    texts = " ".join(b.get("text", "") for b in report["blocks"])
    assert "b is better than a on test accuracy by 2.05 points" in texts
    assert any(b["type"] == "warning" and b["text"].startswith("c did not learn") for b in report["blocks"])
    assert (parent / "figures" / "seed_curves.png").exists() and (parent / "report.html").exists()


def test_the_same_gaps_from_unshared_seeds_are_not_called(tmp_path):
    """Welch's interval on the same numbers (as if the seeds were not shared) cannot separate b from a."""
    mod = _fake_module("fake_unpaired")
    parent = run_experiment(mod, seeds=4, runs_root=tmp_path, verbose=False, device="cpu")
    res = seeds.collect(parent, [0, 1, 2, 3], mod.COMPARE)
    (c,) = [c for c in seeds.stats.compare(seeds.headline(res, mod.COMPARE), paired=False) if {c.a, c.b} == {"a", "b"}]
    assert c.verdict == "tie" and "no measurable difference at 4 seeds" in c.text


def test_an_interrupted_seed_resumes_and_finished_seeds_are_skipped(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_fake_module("fake_cut", fail_at=1), seeds=3, runs_root=tmp_path, verbose=False, device="cpu")
    (parent,) = (tmp_path / "fake-cut").iterdir()
    first = (parent / "seeds" / "seed-0" / "summary.json").stat().st_mtime_ns
    assert not (parent / "summary.json").exists() and not (parent / "seeds" / "seed-1" / "summary.json").exists()
    mod = _fake_module("fake_cut")  # the cause of the interruption is gone
    with pytest.raises(DojoError, match="--seeds 3; --resume cannot change it to 2"):
        run_experiment(mod, resume=parent, seeds=2, verbose=False, device="cpu")
    assert run_experiment(mod, resume=parent, verbose=False, device="cpu") == parent
    assert (parent / "seeds" / "seed-0" / "summary.json").stat().st_mtime_ns == first  # skipped, not re-run
    assert _read(parent / "summary.json")["regimes"]["a"]["test_acc"]["n"] == 3
    done = (parent / "summary.json").stat().st_mtime_ns
    run_experiment(mod, resume=parent, verbose=False, device="cpu")  # finished: nothing to do
    assert (parent / "summary.json").stat().st_mtime_ns == done


def test_refusals(tmp_path):
    mod = _fake_module("fake_refuse")
    for bad in (0, -1, seeds.MAX_SEEDS + 1):
        with pytest.raises(DojoError, match="--seeds must be a whole number"):
            run_experiment(mod, seeds=bad, runs_root=tmp_path, verbose=False, device="cpu")
    with pytest.raises(DojoError, match="repeated runs are asked for with --seeds N"):
        run_experiment(mod, overrides=["seeds=3"], runs_root=tmp_path, verbose=False, device="cpu")
    single = run_experiment(mod, runs_root=tmp_path, verbose=False, device="cpu")
    assert not (single / "seeds").exists() and "seeds" not in _read(single / "config.json")
    with pytest.raises(DojoError, match="is a single run; --resume cannot make it a --seeds 3 run"):
        run_experiment(mod, resume=single, seeds=3, verbose=False, device="cpu")


def test_a_user_seed_is_the_base(tmp_path):
    parent = run_experiment(
        _fake_module("fake_base"), seeds=2, overrides=["seed=7"], runs_root=tmp_path, verbose=False, device="cpu"
    )
    assert _read(parent / "config.json")["seeds"] == [7, 8]
    assert _read(parent / "seeds" / "seed-1" / "config.json")["overrides"] == ["seed=8"]


def test_find_regimes_defaults():
    assert set(seeds.find_regimes({"dataset": "x", "rungs": {"logreg": {"test_acc": 0.8}}})) == {"logreg"}
    assert seeds.find_regimes({"test_acc": 0.5, "seconds": 1.0}) == {"run": {"test_acc": 0.5, "seconds": 1.0}}
    with pytest.raises(DojoError, match="no 'cells' entry"):
        seeds.find_regimes({"rungs": {}}, "cells")


def test_stage_rows_go_to_the_longest_matching_regime():
    rows = [
        {"stage": s, "epoch": e, "val_acc": 0.1}
        for s in ("improved", "improved-bn", "e2-triplet", "e2-head", "resnet18_finetune_p1", "monitor-x")
        for e in (1, 2)
    ]
    out = seeds.stage_rows(rows, ["improved", "improved-bn", "e2", "resnet18:finetune"])
    assert {k: len(v) for k, v in out.items()} == {"improved": 2, "improved-bn": 2, "e2": 4, "resnet18:finetune": 2}
    assert [r["epoch"] for r in out["e2"]] == [1, 2, 3, 4]  # the stages one after another
    assert seeds._stage_starts(out["e2"]) == [3]  # where the figure marks E2's head stage
