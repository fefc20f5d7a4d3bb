"""Conclusions the numbers support: estimates with 95% intervals, comparisons of regimes over seeds, and the
check that a regime learned anything at all.

Every "A vs B" sentence of a report comes from `compare`, so no report calls a winner that its numbers do
not support:

    from torchdojo import stats
    est = stats.estimate([0.861, 0.866, 0.859])        # mean, std, n and the 95% t-interval of the mean
    cmp = stats.compare({"e1": [...], "e4": [...]})     # one Comparison per pair; .verdict and .text
    ok, why = stats.learned(0.096, chance_or_majority=0.1, n_eval=1000, loss_history=[2.31, 2.30])

`compare` pairs the seeds when both regimes ran the same seeds (a paired t-interval of the per-seed
differences: a seed's split and initial weights are shared by its regimes, so their differences vary less
than the regimes do), and uses Welch's interval otherwise. A difference is called only when its 95%
interval excludes zero; otherwise the text says "no measurable difference at N seeds". One seed cannot
decide anything, and a regime that did not learn is never called better: both say so instead.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["better", "worse", "tie", "did-not-learn", "one-seed"]
Pairs = Literal["all", "chain", "vs-first", "vs-best"]
CONFIDENCE = 0.95
NOISE_Z = 3.0  # "within noise of the base rate": under this many binomial standard errors above it
DIVERGED_RATIO = 1.5  # a final training loss this many times the first epoch's: diverged


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t critical value (2.776 for df=4 at 95%)."""
    from scipy import stats as sps  # scikit-learn's own dependency; imported only when an interval is needed

    return float(sps.t.ppf(0.5 + confidence / 2, df))


@dataclass(frozen=True)
class Estimate:
    """The mean of `n` values with their sample standard deviation and the 95% t-interval [low, high] of the
    mean (for n == 1 the interval is the value itself: nothing is known about the spread)."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    def to_dict(self, values: Sequence[float] | None = None) -> dict[str, float | int | list[float]]:
        out: dict[str, float | int | list[float]] = {
            "mean": self.mean,
            "std": self.std,
            "low": self.low,
            "high": self.high,
            "n": self.n,
        }
        if values is not None:
            out["values"] = [float(v) for v in values]
        return out

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sample std (n - 1) and the t-interval of the mean of `values`; ValueError for none or a non-finite one."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("estimate of no values")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"estimate of non-finite values: {xs}")
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return Estimate(mean, 0.0, 1, mean, mean)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1, confidence) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """The difference of means a - b with Welch's t-interval (unequal variances, Welch-Satterthwaite df);
    its `std` is the standard error of the difference and `n` the smaller sample size."""
    ea, eb = estimate(a), estimate(b)
    diff = ea.mean - eb.mean
    va, vb = ea.std**2 / ea.n, eb.std**2 / eb.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, 0.0, min(ea.n, eb.n), diff, diff)
    df = (va + vb) ** 2 / (va**2 / (ea.n - 1) + vb**2 / (eb.n - 1))
    half = t_quantile(df, confidence) * se
    return Estimate(diff, se, min(ea.n, eb.n), diff - half, diff + half)


@dataclass(frozen=True)
class Comparison:
    """Regime `a` against regime `b`. `diff` is a - b in the metric's own units (None when a regime did not learn
    or either has one seed only: nothing is estimated then); `verdict` is from a's side ("better": a is better
    than b beyond the 95% interval; "tie": the interval contains 0); `text` says it in a sentence."""

    a: str
    b: str
    diff: Estimate | None
    paired: bool
    verdict: Verdict
    text: str

    def to_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "verdict": self.verdict,
            "paired": self.paired,
            "diff": self.diff.to_dict() if self.diff is not None else None,
            "text": self.text,
        }


def fmt_value(x: float, unit: str) -> str:
    """A metric value: unit "%" means a fraction shown as a percentage; any other unit is appended."""
    return f"{100 * x:.1f}%" if unit == "%" else f"{x:.4g}{unit}"


def fmt_diff(x: float, unit: str, signed: bool = True) -> str:
    """A difference: percentage points for "%" metrics, else the value with its unit."""
    sign = "+" if signed and x > 0 else ""
    return f"{sign}{100 * x:.2f} points" if unit == "%" else f"{sign}{x:.4g}{unit}"


def fmt_estimate(e: Estimate, unit: str) -> str:
    """'86.2% (95% interval 85.9% to 86.5%, 5 seeds)', or the value alone for one seed."""
    if e.n == 1:
        return f"{fmt_value(e.mean, unit)} (one seed)"
    return (
        f"{fmt_value(e.mean, unit)} (95% interval {fmt_value(e.low, unit)} to {fmt_value(e.high, unit)}, {e.n} seeds)"
    )


def _interval(d: Estimate, unit: str) -> str:
    return f"95% interval {fmt_diff(d.low, unit)} to {fmt_diff(d.high, unit)}"


def pairs_of(names: Sequence[str], how: Pairs, means: Mapping[str, float] | None = None) -> list[tuple[str, str]]:
    """Which pairs to compare: "all" (each with each, in order), "chain" (each step against the one before:
    (second, first), (third, second), ...), "vs-first" (each later one against the first), "vs-best" (the one
    of the highest `means` against each other)."""
    names = list(names)
    if how == "all":
        return [(names[j], names[i]) for i in range(len(names)) for j in range(i + 1, len(names))]
    if how == "chain":
        return [(names[i + 1], names[i]) for i in range(len(names) - 1)]
    if how == "vs-first":
        return [(n, names[0]) for n in names[1:]]
    if how == "vs-best":
        if means is None:
            raise ValueError("pairs='vs-best' needs the means")
        best = max(names, key=lambda n: means[n])
        return [(best, n) for n in names if n != best]
    raise ValueError(f"unknown pairs {how!r}")


def compare_pair(
    a: str,
    b: str,
    va: Sequence[float],
    vb: Sequence[float],
    *,
    higher_is_better: bool = True,
    paired: bool = True,
    learned: Mapping[str, bool | str] | None = None,
    metric: str = "test accuracy",
    unit: str = "%",
) -> Comparison:
    """One pair; see `compare`. `learned` maps a regime to True, or to False / the reason it did not learn."""
    failed = [(n, (learned or {}).get(n, True)) for n in (a, b)]
    failed = [(n, why) for n, why in failed if why is not True]
    ma, mb = sum(va) / len(va), sum(vb) / len(vb)
    if failed:
        whys = "; ".join(
            f"{n} did not learn" + (f" ({why})" if isinstance(why, str) and why else "") for n, why in failed
        )
        return Comparison(a, b, None, False, "did-not-learn", f"{a} vs {b}: {whys}, so neither is called better.")
    if len(va) < 2 or len(vb) < 2:
        n = min(len(va), len(vb))
        text = (
            f"{a} {fmt_value(ma, unit)} vs {b} {fmt_value(mb, unit)} {metric} ({fmt_diff(ma - mb, unit)}) from "
            f"{'one seed' if n == 1 else f'{n} seed(s)'}: one seed cannot decide this; run with --seeds N "
            "(e.g. --seeds 5) to measure the seed-to-seed spread."
        )
        return Comparison(a, b, None, False, "one-seed", text)
    is_paired = paired and len(va) == len(vb)
    diff = estimate([x - y for x, y in zip(va, vb, strict=True)]) if is_paired else welch(va, vb)
    how = f"paired, {diff.n} seeds" if is_paired else f"Welch, {len(va)} and {len(vb)} seeds"
    if not diff.excludes_zero():
        text = (
            f"{a} vs {b}: no measurable difference at {diff.n} seeds ({metric} {fmt_value(ma, unit)} vs "
            f"{fmt_value(mb, unit)}, difference {fmt_diff(diff.mean, unit)}, {_interval(diff, unit)}; "
            f"{'paired' if is_paired else how})."
        )
        return Comparison(a, b, diff, is_paired, "tie", text)
    a_ahead = (diff.mean > 0) == higher_is_better
    verdict: Verdict = "better" if a_ahead else "worse"
    text = (
        f"{a} is {verdict} than {b} on {metric} by {fmt_diff(abs(diff.mean), unit, signed=False)} "
        f"({fmt_value(ma, unit)} vs {fmt_value(mb, unit)}; {_interval(diff, unit)} for {a} - {b}; {how})."
    )
    return Comparison(a, b, diff, is_paired, verdict, text)


def compare(
    results: Mapping[str, Sequence[float]],
    *,
    higher_is_better: bool = True,
    paired: bool = True,
    learned: Mapping[str, bool | str] | None = None,
    metric: str = "test accuracy",
    unit: str = "%",
    pairs: Pairs | Sequence[tuple[str, str]] = "all",
) -> list[Comparison]:
    """Compare regimes from their per-seed values of one metric (`results[regime][k]` = seed k's value).

    `paired`: the k-th values of every regime come from the same seed (same split and initial weights), so the
    paired t-interval of the differences is used when both have as many seeds; otherwise Welch's. `learned`
    maps a regime to True or to False / a reason (from `learned()`): a pair with a regime that did not learn is
    "did-not-learn", never better. `pairs` says which pairs (see `pairs_of`) or lists them as (a, b)."""
    for name, vals in results.items():
        if not vals:
            raise ValueError(f"regime {name!r} has no values")
    if isinstance(pairs, str):
        sign = 1 if higher_is_better else -1
        means = {n: sign * sum(v) / len(v) for n, v in results.items()}
        chosen = pairs_of(list(results), pairs, means)
    else:
        chosen = list(pairs)
    opts = {"higher_is_better": higher_is_better, "paired": paired, "learned": learned, "metric": metric, "unit": unit}
    return [compare_pair(a, b, results[a], results[b], **opts) for a, b in chosen]


def bullet_list(comparisons: Sequence[Comparison]) -> str:
    """The comparisons' texts as a report bullet list ('- ...' lines)."""
    return "\n".join(f"- {c.text}" for c in comparisons)


def majority_rate(labels: Sequence[int]) -> float:
    """The accuracy of always predicting the most frequent label (at least 1/K for K balanced classes)."""
    counts: dict[int, int] = {}
    for y in labels:
        counts[int(y)] = counts.get(int(y), 0) + 1
    if not counts:
        raise ValueError("majority_rate of no labels")
    return max(counts.values()) / sum(counts.values())


def learned(
    final_acc: float,
    *,
    chance_or_majority: float,
    n_eval: int,
    loss_history: Sequence[float] | None = None,
) -> tuple[bool, str]:
    """Whether a run learned, and why (or why not), in one sentence.

    It did not when its final accuracy is within noise of the base rate (`chance_or_majority`: what always
    predicting the majority class scores on the same `n_eval` images; noise = NOISE_Z binomial standard errors
    at that rate), when its training loss became non-finite or rose to DIVERGED_RATIO x its first epoch's
    (diverged), or when the loss did not fall below its first epoch's."""
    if loss_history:
        losses = [float(v) for v in loss_history]
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            return False, f"diverged: the training loss became {losses[bad]} at epoch {bad + 1}"
        if len(losses) > 1 and losses[-1] > DIVERGED_RATIO * losses[0]:
            return False, f"diverged: the training loss rose from {losses[0]:.4g} to {losses[-1]:.4g}"
        if len(losses) > 1 and losses[-1] >= losses[0]:
            return False, f"the training loss did not fall ({losses[0]:.4g} at epoch 1, {losses[-1]:.4g} at the end)"
    if not math.isfinite(final_acc):
        return False, f"its accuracy is {final_acc}"
    p0 = min(max(chance_or_majority, 0.0), 1.0)
    noise = NOISE_Z * math.sqrt(p0 * (1 - p0) / max(n_eval, 1))
    gap = final_acc - p0
    base = f"the {100 * p0:.1f}% majority/chance rate"
    if gap <= noise:
        return False, (
            f"final accuracy {100 * final_acc:.1f}% is {'below' if gap < -noise else 'within noise of'} {base} "
            f"({fmt_diff(gap, '%')}; noise = {NOISE_Z:g} standard errors = {100 * noise:.1f} points on {n_eval} images)"
        )
    return True, f"final accuracy {100 * final_acc:.1f}% is {fmt_diff(gap, '%', signed=False)} above {base}"


def learned_eval(test_eval: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """`learned` of a classifier from `engine.evaluate(..., return_outputs=True)`'s result (its "acc", "n" and
    "targets": the majority rate is that of the very images it was scored on) and its `fit` history (the
    "train_loss" of each epoch)."""
    return learned(
        float(test_eval["acc"]),
        chance_or_majority=majority_rate(test_eval["targets"].tolist()),
        n_eval=int(test_eval["n"]),
        loss_history=[float(r["train_loss"]) for r in history if "train_loss" in r],
    )


def learned_entry(ok: bool, why: str) -> dict[str, bool | str]:
    """What a summary.json regime entry carries about it: {"learned": ok, "learned_reason": why}."""
    return {"learned": ok, "learned_reason": why}
