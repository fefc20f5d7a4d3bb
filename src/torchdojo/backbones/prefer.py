"""D2/D3's "which would you prefer": the answer written from one transfer run's numbers (test accuracy, training
time, trained parameters) and from whether each run learned at all; a run that did not learn is named as such
and never preferred, and every "A vs B" goes through `torchdojo.stats.compare`, so one seed says what it
cannot decide.
"""

from typing import Any

from torchdojo import stats


def prefer_text(rows: list[dict[str, Any]], learned: dict[str, bool | str]) -> str:
    """The answer to "which would you prefer", generated from the runs' rows (test_acc, train_seconds,
    trainable, params) and whether each learned: runs that did not learn are named and never preferred; the
    comparisons say what one seed can and cannot decide; D3 (small-resnet) is set against D1 (a frozen run)."""
    ok = [r for r in rows if learned.get(r["run"], True) is True]
    lines = [
        f"- {r['run']} did not learn: {learned[r['run']]}. It is not a candidate; this run does not show what "
        "it would reach with more data or epochs."
        for r in rows
        if r not in ok
    ]
    if not ok:
        return "\n".join([*lines, "- No run learned, so there is nothing to prefer."])
    best = max(ok, key=lambda r: r["test_acc"])
    fastest = min(ok, key=lambda r: r["train_seconds"])
    values = {r["run"]: [r["test_acc"]] for r in rows}
    cmps = stats.compare(values, learned=learned, pairs=[(best["run"], r["run"]) for r in ok if r is not best])
    lines += [f"- {c.text}" for c in cmps]
    lines += _d3_vs_d1(rows, learned)
    lines.append(f"- {_choice(best, fastest, len(ok))}")
    return "\n".join(lines)


def _choice(best: dict[str, Any], fastest: dict[str, Any], n_learned: int) -> str:
    """Which run to prefer on this run's numbers, and the trade-off when the most accurate is not the cheapest."""
    acc = f"{best['test_acc']:.1%} test accuracy, {best['train_seconds']:.0f} s"
    if n_learned == 1:
        return f"Only {best['run']} learned ({acc}): prefer it."
    if best is fastest:
        return f"Prefer {best['run']}: on this run it is both the most accurate and the cheapest to train ({acc})."
    gap = 100 * (best["test_acc"] - fastest["test_acc"])
    ratio = best["train_seconds"] / max(fastest["train_seconds"], 1e-9)
    return (
        f"Prefer {best['run']} ({acc}, {best['trainable']:,} parameters trained) when {gap:.1f} more points are "
        f"worth {ratio:.1f}x the training time; otherwise {fastest['run']} ({fastest['test_acc']:.1%}, "
        f"{fastest['train_seconds']:.0f} s, {fastest['trainable']:,} parameters trained). Whether the gap is "
        "beyond seed-to-seed noise is what the comparisons above say."
    )


def _d3_vs_d1(rows: list[dict[str, Any]], learned: dict[str, bool | str]) -> list[str]:
    """D3's question: the small ResNet trained from scratch against the frozen pretrained backbone (D1)."""
    d3 = next((r for r in rows if r["run"] == "small-resnet"), None)
    d1 = next((r for r in rows if r["run"].endswith(":frozen")), None)
    if d3 is None or d1 is None:
        return []
    (c,) = stats.compare(
        {d3["run"]: [d3["test_acc"]], d1["run"]: [d1["test_acc"]]}, learned=learned, pairs=[(d1["run"], d3["run"])]
    )
    ratio = d1["train_seconds"] / max(d3["train_seconds"], 1e-9)
    return [
        f"- D3 vs D1 ({d3['run']} from scratch, {d3['trainable']:,} parameters, {d3['train_seconds']:.0f} s; "
        f"{d1['run']}, {d1['trainable']:,} trained, {d1['train_seconds']:.0f} s = {ratio:.2g}x the time): {c.text}"
    ]
