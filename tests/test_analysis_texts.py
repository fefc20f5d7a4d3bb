"""The "compare / prefer / analyse" texts of ladder (C4), transfer (D2/D3) and metric-learning (E3), on
constructed results: written from the numbers, failed regimes flagged, one seed never picking a winner."""

import types

import torch

from torchdojo import stats
from torchdojo.backbones.prefer import prefer_text
from torchdojo.experiments import ladder
from torchdojo.metric.compare import conclusion
from torchdojo.report import Report

# the C4 numbers: baseline 84.7%, improved 81.8%, +BN 89.3%, +dropout 87.5%
C4 = {"baseline": 0.847, "improved": 0.818, "improved-bn": 0.893, "improved-bn-dropout": 0.875}


def test_c4_text_names_the_steps_that_hurt_on_one_seed():
    values = {k: [v] for k, v in C4.items()}
    text = ladder.seeds_text(stats.compare(values, pairs="chain"), values)
    assert (
        "Steps that hurt on this seed: baseline -> improved (-2.90 points), improved-bn -> improved-bn-dropout" in text
    )
    assert "(-1.80 points); one seed cannot tell whether that is beyond noise (run with --seeds 5)" in text
    assert "improved-bn -> " not in text.split("Steps that hurt")[1].split(",")[0]  # +BN helped: not named
    assert text.count("one seed cannot decide this") == 3  # every step says one seed cannot decide


def test_c4_text_over_seeds_names_only_what_the_intervals_support():
    spread = [0.0, 0.01, -0.01, 0.005, -0.005]
    values = {k: [v + d for d in spread] for k, v in C4.items()}
    values["improved-bn-dropout"] = [v + 0.004 * (-1) ** i for i, v in enumerate(values["improved-bn"])]  # noise
    text = ladder.seeds_text(stats.compare(values, pairs="chain"), values)
    assert "Steps that hurt (lower beyond the 95% interval): baseline -> improved (-2.90 points)." in text
    assert "improved-bn is better than improved" in text
    assert "improved-bn-dropout vs improved-bn: no measurable difference at 5 seeds" in text


def test_c4_section_in_the_report_and_a_rung_that_did_not_learn():
    rows = [{"rung": k, "test_acc": v, "learned": True, "learned_reason": "ok"} for k, v in C4.items()]
    rows[1].update(learned=False, learned_reason="final accuracy 10.0% is within noise of the 10.0% rate")
    ctx = types.SimpleNamespace(report=Report("t"))
    ladder.report_steps(rows, ctx)
    heading, text = ctx.report.blocks
    assert heading["text"] == "C4. Each step's effect"
    assert "improved did not learn (final accuracy 10.0%" in text["text"]
    assert "Not compared, a rung did not learn: baseline -> improved, improved -> improved-bn." in text["text"]
    assert "improved is worse" not in text["text"] and "improved-bn is better" not in text["text"]


def _row(run, acc, seconds, trainable, params):
    return {"run": run, "test_acc": acc, "train_seconds": seconds, "trainable": trainable, "params": params}


TRANSFER = [
    _row("logreg", 0.80, 5, 7_850, 7_850),
    _row("efficientnet_lite0:frozen", 0.86, 40, 400_000, 3_800_000),
    _row("efficientnet_lite0:finetune", 0.88, 300, 3_800_000, 3_800_000),
    _row("small-resnet", 0.84, 120, 700_000, 700_000),
    _row("efficientnet_lite0:scratch", 0.096, 280, 3_800_000, 3_800_000),
]


def test_transfer_flags_the_from_scratch_regime_at_chance():
    ev = {"acc": 0.096, "n": 1000, "targets": torch.arange(1000) % 10}
    ok, why = stats.learned_eval(ev, [{"train_loss": 2.31}, {"train_loss": 2.30}])
    assert not ok and "within noise of the 10.0% majority/chance rate" in why
    learned = {r["run"]: True for r in TRANSFER} | {"efficientnet_lite0:scratch": why}
    text = prefer_text(TRANSFER, learned)
    assert "- efficientnet_lite0:scratch did not learn: final accuracy 9.6% is within noise" in text
    assert "needs more data" not in text
    assert "Prefer efficientnet_lite0:finetune (88.0% test accuracy, 300 s" in text
    assert "when 8.0 more points are worth 60.0x the training time; otherwise logreg" in text
    body = text.split("did not learn")[1]
    assert "efficientnet_lite0:scratch is" not in body  # never compared as better or worse
    assert "efficientnet_lite0:finetune 88.0% vs efficientnet_lite0:frozen 86.0% test accuracy" in text
    assert text.count("one seed cannot decide this") == 4  # best vs each other learned run, and D3 vs D1


def test_transfer_d3_vs_d1_is_generated():
    learned = {r["run"]: True for r in TRANSFER}
    text = prefer_text(TRANSFER, learned)
    (d3,) = [line for line in text.splitlines() if line.startswith("- D3 vs D1")]
    assert (
        "small-resnet from scratch, 700,000 parameters, 120 s; efficientnet_lite0:frozen, 400,000 trained, 40 s" in d3
    )
    assert "efficientnet_lite0:frozen 86.0% vs small-resnet 84.0% test accuracy (+2.00 points)" in d3
    other = [dict(r, test_acc=0.9) if r["run"] == "small-resnet" else r for r in TRANSFER]
    assert "small-resnet 90.0%" in prefer_text(other, learned)


def test_transfer_when_nothing_learned():
    text = prefer_text(TRANSFER[:1], {"logreg": "its loss did not fall"})
    assert "logreg did not learn: its loss did not fall" in text and "nothing to prefer" in text


def _ml(acc, learned=True):
    sep = {"block1": {"fisher": 1.0, "probe": 0.7}, "embedding": {"fisher": 2.0, "probe": 0.8}}
    return {
        "test_acc": acc,
        "knn_test_acc": acc - 0.01,
        "separability": sep,
        "epochs_to_target": 3,
        "seconds_to_target": 12.0,
        "collapse_warnings": [],
        **stats.learned_entry(learned, "ok" if learned else "final accuracy 50.1% is within noise of the 50.0% rate"),
    }


def test_e3_one_seed_calls_no_winner():
    """The issue's E1 86.15% / E2 86.20% / E4 86.30%: one seed cannot rank them."""
    text = conclusion({"e1": _ml(0.8615), "e2": _ml(0.8620), "e4": _ml(0.8630)}, ["block1"])
    assert "is best" not in text and "better" not in text
    assert "e4 86.3% vs e1 86.2% test accuracy (+0.15 points) from one seed: one seed cannot decide this" in text
    assert "--seeds 5" in text


def test_e3_a_regime_that_did_not_learn():
    text = conclusion({"e1": _ml(0.86), "e2": _ml(0.501, learned=False)}, ["block1"])
    assert "e2 did not learn (final accuracy 50.1%" in text and "neither is called better" in text
