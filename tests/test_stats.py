"""torchdojo.stats: estimates, the comparison helper's verdicts and texts on made-up numbers, failure flags."""

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo import stats


def test_estimate_matches_the_t_interval_by_hand():
    vals = [0.80, 0.82, 0.81, 0.85, 0.79]
    e = stats.estimate(vals)
    half = 2.7764451051977987 * statistics.stdev(vals) / math.sqrt(5)  # t(0.975, df=4)
    assert e.n == 5 and e.mean == pytest.approx(statistics.mean(vals))
    assert e.std == pytest.approx(statistics.stdev(vals))
    assert (e.low, e.high) == pytest.approx((e.mean - half, e.mean + half))


def test_estimate_of_one_value_has_no_spread_and_decides_nothing():
    e = stats.estimate([0.5])
    assert (e.mean, e.std, e.n, e.low, e.high) == (0.5, 0.0, 1, 0.5, 0.5)
    assert not e.excludes_zero()


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_estimate_refuses_no_or_non_finite_values(bad):
    with pytest.raises(ValueError):
        stats.estimate(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=12))
def test_interval_contains_the_mean(vals):
    e = stats.estimate(vals)
    assert e.low <= e.mean + 1e-9 and e.mean - 1e-9 <= e.high
    assert e.std >= 0


# made-up per-seed test accuracies of three regimes over 5 shared seeds
E1 = [0.860, 0.852, 0.871, 0.848, 0.866]
E4_BETTER = [x + d for x, d in zip(E1, [0.021, 0.019, 0.024, 0.018, 0.022], strict=True)]  # +2 points every seed
E2_NOISY = [x + d for x, d in zip(E1, [0.010, -0.012, 0.004, -0.006, 0.003], strict=True)]  # noise around E1


def test_better_when_the_paired_interval_excludes_zero():
    (c,) = stats.compare({"e1": E1, "e4": E4_BETTER}, pairs=[("e4", "e1")])
    assert c.verdict == "better" and c.paired
    assert c.diff is not None and c.diff.low > 0
    assert c.text.startswith("e4 is better than e1 on test accuracy by 2.08 points")
    assert "95% interval" in c.text and "paired, 5 seeds" in c.text


def test_worse_from_the_other_side():
    (c,) = stats.compare({"e1": E1, "e4": E4_BETTER}, pairs=[("e1", "e4")])
    assert c.verdict == "worse"
    assert c.text.startswith("e1 is worse than e4")


def test_lower_is_better_flips_the_verdict():
    (c,) = stats.compare(
        {"a": [1.0, 1.1, 1.2], "b": [2.0, 2.1, 2.25]},
        pairs=[("a", "b")],
        higher_is_better=False,
        metric="test loss",
        unit="",
    )
    assert c.verdict == "better"
    assert "a is better than b on test loss by 1.017" in c.text


def test_tie_when_the_interval_contains_zero():
    (c,) = stats.compare({"e1": E1, "e2": E2_NOISY}, pairs=[("e2", "e1")])
    assert c.verdict == "tie"
    assert c.diff is not None and c.diff.low < 0 < c.diff.high
    assert "no measurable difference at 5 seeds" in c.text
    assert "better" not in c.text and "worse" not in c.text


def test_pairing_matters_the_same_gaps_unpaired_are_a_tie():
    """Seed-to-seed spread (1.2 points) larger than the gap (0.5): only pairing the seeds resolves it."""
    base = [0.80, 0.82, 0.81, 0.83, 0.79]
    plus = [x + 0.005 + e for x, e in zip(base, [0.0005, -0.0005, 0.0003, -0.0002, 0.0], strict=True)]
    (paired,) = stats.compare({"a": base, "b": plus}, pairs=[("b", "a")])
    (welch,) = stats.compare({"a": base, "b": plus}, pairs=[("b", "a")], paired=False)
    assert paired.verdict == "better" and paired.paired
    assert welch.verdict == "tie" and not welch.paired and "Welch" in welch.text


def test_unequal_seed_counts_fall_back_to_welch():
    (c,) = stats.compare({"a": [0.9, 0.91, 0.92, 0.9], "b": [0.5, 0.52, 0.51]}, pairs=[("a", "b")])
    assert c.verdict == "better" and not c.paired
    assert "Welch, 4 and 3 seeds" in c.text


def test_did_not_learn_is_never_better():
    scratch = [0.096, 0.101, 0.099, 0.097, 0.1]
    why = "final accuracy 9.6% is within noise of the 10.0% majority/chance rate"
    cs = stats.compare({"frozen": E1, "scratch": scratch}, learned={"frozen": True, "scratch": why})
    (c,) = cs
    assert c.verdict == "did-not-learn" and c.diff is None
    assert "scratch did not learn (final accuracy 9.6%" in c.text
    assert "neither is called better" in c.text
    # also when the failing regime has the higher numbers, and with a plain False
    (c2,) = stats.compare({"a": [0.9, 0.91], "b": [0.5, 0.5]}, learned={"a": False}, pairs=[("a", "b")])
    assert c2.verdict == "did-not-learn" and "a did not learn" in c2.text


def test_one_seed_cannot_decide():
    (c,) = stats.compare({"e1": [0.8615], "e4": [0.8630]}, pairs=[("e4", "e1")])
    assert c.verdict == "one-seed" and c.diff is None
    assert "e4 86.3% vs e1 86.2% test accuracy (+0.15 points) from one seed" in c.text
    assert "one seed cannot decide this; run with --seeds N" in c.text


def test_texts_follow_the_numbers():
    """The same call on other numbers gives other words: nothing is fixed prose."""
    (a,) = stats.compare({"x": [0.5, 0.52, 0.51], "y": [0.7, 0.71, 0.69]}, pairs=[("x", "y")])
    (b,) = stats.compare({"x": [0.7, 0.71, 0.69], "y": [0.5, 0.52, 0.51]}, pairs=[("x", "y")])
    assert a.text.startswith("x is worse than y on test accuracy by 19.00 points (51.0% vs 70.0%")
    assert b.text.startswith("x is better than y on test accuracy by 19.00 points (70.0% vs 51.0%")


def test_pairs_of():
    names = ["baseline", "improved", "bn", "dropout"]
    assert stats.pairs_of(names, "chain") == [("improved", "baseline"), ("bn", "improved"), ("dropout", "bn")]
    assert stats.pairs_of(names[:3], "all") == [("improved", "baseline"), ("bn", "baseline"), ("bn", "improved")]
    assert stats.pairs_of(names[:3], "vs-first") == [("improved", "baseline"), ("bn", "baseline")]
    means = {"baseline": 0.8, "improved": 0.7, "bn": 0.9}
    assert stats.pairs_of(names[:3], "vs-best", means) == [("bn", "baseline"), ("bn", "improved")]
    with pytest.raises(ValueError):
        stats.pairs_of(names, "every")  # type: ignore[arg-type]


def test_vs_best_for_a_lower_is_better_metric_picks_the_lowest():
    cs = stats.compare({"a": [3.0, 3.1], "b": [1.0, 1.1]}, pairs="vs-best", higher_is_better=False, unit=" s")
    assert [(c.a, c.b) for c in cs] == [("b", "a")]


def test_comparison_to_dict_is_json_ready():
    import json

    (c,) = stats.compare({"e1": E1, "e4": E4_BETTER}, pairs=[("e4", "e1")])
    d = json.loads(json.dumps(c.to_dict()))
    assert d["verdict"] == "better" and d["diff"]["n"] == 5 and d["diff"]["low"] > 0


def test_learned_at_chance_is_flagged():
    ok, why = stats.learned(0.096, chance_or_majority=0.1, n_eval=1000)
    assert not ok and "within noise of the 10.0% majority/chance rate" in why


def test_learned_well_above_the_base_rate():
    ok, why = stats.learned(0.86, chance_or_majority=0.5, n_eval=2000, loss_history=[0.6, 0.4, 0.3])
    assert ok and "above the 50.0%" in why


def test_majority_rate_is_the_bar_for_imbalanced_data():
    """F4's case: 70.4% on a set whose majority class is 70.2% is not learning."""
    ok, _ = stats.learned(0.704, chance_or_majority=stats.majority_rate([1] * 702 + [0] * 298), n_eval=1000)
    assert not ok
    assert stats.majority_rate([0, 1, 1, 2]) == 0.5


def test_loss_that_did_not_fall_or_diverged_is_flagged():
    ok, why = stats.learned(0.9, chance_or_majority=0.1, n_eval=1000, loss_history=[2.30, 2.31])
    assert not ok and "did not fall" in why
    ok, why = stats.learned(0.9, chance_or_majority=0.1, n_eval=1000, loss_history=[2.3, 1.0, float("nan")])
    assert not ok and "diverged" in why and "epoch 3" in why
    ok, why = stats.learned(0.9, chance_or_majority=0.1, n_eval=1000, loss_history=[1.0, 0.5, 4.0])
    assert not ok and "rose from 1 to 4" in why


def test_few_evaluation_images_widen_the_noise():
    """30% on 20 images of 10 classes is within 3 standard errors of chance; on 2,000 images it is not."""
    assert not stats.learned(0.30, chance_or_majority=0.1, n_eval=20)[0]
    assert stats.learned(0.30, chance_or_majority=0.1, n_eval=2000)[0]
