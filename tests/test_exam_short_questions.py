"""H4: the measurements behind the exam's short questions, and the experiment's smoke run."""

import json
import random

import pytest
import torch

from torchdojo.exam import divergence, search, timing
from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments.base import run_experiment


def test_cross_entropy_is_entropy_plus_kl_on_every_example() -> None:
    for row in divergence.example_table():
        assert abs(row["CE - H - KL"]) < 1e-12
        assert row["KL(p || q)"] >= -1e-12
    same = next(r for r in divergence.example_table() if "q = p" in r["case"])
    assert same["KL(p || q)"] == pytest.approx(0, abs=1e-12) and same["CE(p, q)"] > 0.2  # soft labels: CE > 0


def test_gradients_agree_in_q_and_differ_in_p() -> None:
    g = divergence.gradients(seed=3)
    assert g["q_grad_max_diff"] < 1e-12 * max(1.0, g["q_grad_max"])
    assert g["p_grad_max_diff"] > 1e-3


def test_search_draws_only_unfixed_knobs_within_their_ranges() -> None:
    rng = random.Random(0)
    for _ in range(50):
        t = search.draw(search.SPACES["many"], rng, fixed={"lr"})
        assert "lr" not in t
        assert 1e-6 <= t["weight_decay"] <= 1e-1 and t["optimizer"] in ("sgd", "adam", "adamw")
        assert 0.0 <= t["dropout"] <= 0.5 and t["batch_size"] in (32, 64, 128, 256)
    assert set(search.draw(search.SPACES["few"], rng, set())) == {"lr"}


def test_residual_mlp_matches_its_plain_twin_in_parameters() -> None:
    plain, resid = timing.mlp(784, 32, 10, depth=6), timing.ResidualMLP(784, 32, 10, 6)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in resid.parameters())
    assert resid(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_step_timing_covers_the_grid() -> None:
    rows = timing.time_steps(torch.device("cpu"), [4, 16], [8], steps=2)
    assert [(r["batch"], r["width"]) for r in rows] == [(4, 8), (16, 8)]
    assert all(r["ms_per_step"] > 0 and r["gflops"] > 0 for r in rows)


def test_smoke_run(tmp_path) -> None:
    path = run_experiment(EXPERIMENTS.get("exam-short-questions"), scale="smoke", runs_root=tmp_path, verbose=False)
    s = json.loads((path / "summary.json").read_text())
    assert s["cpu_vs_gpu"]["cuda"] is torch.cuda.is_available()
    assert {r["device"] for r in s["cpu_vs_gpu"]["steps"]} >= {"cpu"}
    assert len(s["hyper_parameters"]["few"]["trials"]) == 2 and len(s["hyper_parameters"]["many"]["trials"]) == 2
    assert all("diagnosis" in r for r in s["poor_network"]["diagnosis"].values())
    assert len(s["poor_network"]["depth"]) == 3
    stages = json.loads((path / "config.json").read_text())["stages"]
    assert "search-few-1" in stages and "depth-3" in stages
    report = (path / "report.json").read_text()
    assert "No CUDA device" in report or torch.cuda.is_available()


def test_a_knob_you_set_is_fixed_not_searched(tmp_path) -> None:
    path = run_experiment(
        EXPERIMENTS.get("exam-short-questions"),
        scale="smoke",
        overrides=["train.lr=0.0042"],
        runs_root=tmp_path,
        verbose=False,
    )
    stages = json.loads((path / "config.json").read_text())["stages"]
    assert {cfg["lr"] for cfg in stages.values()} == {0.0042}
    trials = json.loads((path / "summary.json").read_text())["hyper_parameters"]["many"]["trials"]
    assert all("lr" not in t for t in trials)
