"""G1/G2's conclusions, written from a run's numbers: whether each autoencoder learned (against predicting the mean
image), what the inverse loss costs in reconstruction (MSE with vs without lambda, per held-out image paired),
and the side-by-side discussion of FC vs conv, ReLU, pooling, tying and striding.

One run's intervals are over its held-out images (the same images decoded by both models): they say whether the
two trained models differ on this data, not whether another training seed would give the same gap; `--seeds N`
compares over seeds (`seeds_text`)."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torchdojo import stats

ARCHS = ("fc", "conv")


def ae_learned(per_image: Sequence[float], mean_image: Sequence[float], losses: Sequence[float]) -> tuple[bool, str]:
    """Whether an autoencoder learned: its training loss fell (and stayed finite), and its held-out per-image MSE
    is below that of predicting the training mean image, beyond the 95% interval of the paired difference."""
    xs = [float(v) for v in losses]
    if any(not math.isfinite(v) for v in xs):
        return False, "diverged: the training loss became non-finite"
    if len(xs) > 1 and xs[-1] >= xs[0]:
        return False, f"the training loss did not fall ({xs[0]:.4g} at epoch 1, {xs[-1]:.4g} at the end)"
    if any(not math.isfinite(v) for v in per_image):
        return False, "its reconstructions are not finite"
    d = stats.estimate([a - b for a, b in zip(per_image, mean_image, strict=True)])
    model, base = sum(per_image) / len(per_image), sum(mean_image) / len(mean_image)
    said = f"held-out MSE {model:.4g} vs {base:.4g} for predicting the mean image"
    if d.n > 1 and d.high < 0:
        return True, f"{said} (95% interval of the difference {d.low:.3g} to {d.high:.3g} over {d.n} images)"
    return False, f"{said}: not lower beyond the 95% interval ({d.low:.3g} to {d.high:.3g} over {d.n} images)"


def paired_text(a: str, b: str, va: Sequence[float], vb: Sequence[float], what: str) -> tuple[stats.Estimate, str]:
    """a against b on the same held-out images: the mean per-image difference a - b with its 95% interval."""
    d = stats.estimate([x - y for x, y in zip(va, vb, strict=True)])
    ma, mb = sum(va) / len(va), sum(vb) / len(vb)
    rel = f", {100 * (ma - mb) / mb:+.1f}%" if mb > 0 else ""
    told = f"{what} {ma:.4g} ({a}) vs {mb:.4g} ({b}), difference {d.mean:+.3g}{rel}"
    if d.excludes_zero():
        word = "higher" if d.mean > 0 else "lower"
        return d, f"{told}: {a} is {word} beyond the 95% interval ({d.low:+.3g} to {d.high:+.3g}, {d.n} images)"
    return d, f"{told}: no measurable difference over {d.n} images (95% interval {d.low:+.3g} to {d.high:+.3g})"


def inverse_loss_cost(
    summary: Mapping[str, Mapping[str, Any]], per_image: Mapping[str, Sequence[float]], lam: float
) -> list[str]:
    """G1: for each architecture with both untied variants (they differ only in lambda), the reconstruction cost
    of the inverse loss (test MSE with lambda = `lam` against lambda = 0, paired per image) and what it bought
    (the mean per-layer inverse error)."""
    lines = []
    for arch in ARCHS:
        base = f"{arch}-lam0"
        if arch not in per_image or base not in per_image:
            continue
        d, text = paired_text(arch, base, per_image[arch], per_image[base], "test MSE")
        if not d.excludes_zero():
            cost = "has no measurable reconstruction cost here"
        else:
            cost = "costs reconstruction MSE here" if d.mean > 0 else "lowers the reconstruction MSE here"
        ia, ib = summary[arch]["mean_inverse_err"], summary[base]["mean_inverse_err"]
        ok = summary[arch].get("learned", True) and summary[base].get("learned", True)
        lines.append(
            f"- {arch}: lambda = {lam:g} {cost}: {text}. It changes the mean per-layer relative inverse error from "
            f"{ib:.3g} (lambda = 0) to {ia:.3g}"
            + (f" ({ia / ib:.2f}x)" if ib > 0 else "")
            + ("." if ok else "; a variant did not learn (see the warnings), so this says little.")
        )
    return lines or [
        "No architecture ran with both lambda = 0 and lambda > 0: the inverse loss's cost is not measured."
    ]


def seeds_text(comparisons: list[stats.Comparison], values: dict[str, list[float]]) -> str:
    """`--seeds N`: the inverse loss's reconstruction cost over seeds (test MSE of each untied lambda > 0 variant
    against its lambda = 0 one, paired by seed), after the generic comparisons."""
    pairs = [(a, f"{a}-lam0") for a in ARCHS if a in values and f"{a}-lam0" in values]
    if not pairs:
        return "No variant has its lambda = 0 counterpart in this run: the inverse loss's cost is not measured."
    cmps = stats.compare(values, higher_is_better=False, metric="test MSE", unit="", pairs=pairs)
    failed = any(c.verdict == "did-not-learn" for c in comparisons)
    return (
        "The reconstruction cost of the inverse loss over the seeds (lower MSE is better):\n"
        + stats.bullet_list(cmps)
        + ("\nSome variants did not learn (the warnings above): their MSE differences say little." if failed else "")
    )


def _get(summary: Mapping[str, Mapping[str, Any]], name: str, key: str) -> str:
    if name not in summary:
        return "n/a"
    v = summary[name][key]
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def versus(summary: Mapping[str, Mapping[str, Any]], a: str, b: str, key: str) -> str:
    """'a 0.12 vs b 0.05 (a 2.4x b's)' from the summary, or the values alone when a ratio means nothing."""
    if a not in summary or b not in summary:
        return f"{a} {_get(summary, a, key)} vs {b} {_get(summary, b, key)}"
    va, vb = summary[a][key], summary[b][key]
    ratio = f" ({a} {va / vb:.2f}x {b}'s)" if vb and math.isfinite(va / vb) else ""
    return f"{a} {va:.4g} vs {b} {vb:.4g}{ratio}"


def discussion(summary: Mapping[str, Any], layer_rows: list[dict[str, Any]], probe: list[dict[str, Any]]) -> str:
    """The side-by-side explanation, every comparison from this run's numbers (one seed: the ratios are this
    run's, not a measured difference; see the inverse-loss section for intervals)."""
    lines = []
    if "fc" in summary and "conv" in summary:
        lines.append(
            f"- Reconstruction: test MSE {versus(summary, 'fc', 'conv', 'test_mse')} with "
            f"{_get(summary, 'fc', 'params')} vs {_get(summary, 'conv', 'params')} parameters: the conv model shares "
            f"each kernel across positions, so it is {summary['fc']['params'] / summary['conv']['params']:.0f}x "
            "smaller for its code size."
        )
        exact = [
            f"{r['layer']} {r['in']} -> {r['out']} (pinv_rel_err {r['pinv_rel_err']:.2g})"
            for r in layer_rows
            if r["variant"] == "conv" and r["dim_ratio"] >= 1
        ]
        lines.append(
            f"- Per-layer inverse error: mean {versus(summary, 'fc', 'conv', 'mean_inverse_err')}. An FC or conv "
            "layer that narrows (dim_ratio < 1) can at best project onto its row space (pinv_rel_err > 0); the conv "
            f"layers that do not narrow here: {', '.join(exact) or 'none'}."
        )
    if "conv-relu" in summary and "conv" in summary:
        zeroed = [r["zeroed"] for r in layer_rows if r["variant"] == "conv-relu"]
        lines.append(
            f"- ReLU: mean inverse error {versus(summary, 'conv-relu', 'conv', 'mean_inverse_err')}; ReLU zeroed "
            f"{min(zeroed):.0%}-{max(zeroed):.0%} of each layer's units (column 'zeroed'), and a zero does not say "
            "how negative the unit was."
        )
    if "conv-pool" in summary and "conv" in summary:
        lines.append(
            f"- Pooling: mean inverse error {versus(summary, 'conv-pool', 'conv', 'mean_inverse_err')}, test MSE "
            f"{versus(summary, 'conv-pool', 'conv', 'test_mse')}; a 2x2 max-pool keeps one value of four and not "
            "where it was, which the nearest-neighbour upsampling of its mirror cannot restore."
        )
    for arch in ARCHS:
        cos = [r["cos_to_pinv"] for r in layer_rows if r["variant"] == f"{arch}-tied" and "cos_to_pinv" in r]
        if cos and arch in summary and f"{arch}-tied" in summary:
            lines.append(
                f"- Tied weights ({arch}): B_i = A_i^T equals pinv(A_i) when A_i has orthonormal rows; here A_i^T is "
                f"at cosine {min(cos):.2f}-{max(cos):.2f} to pinv(A_i), and the test MSE is "
                f"{versus(summary, f'{arch}-tied', arch, 'test_mse')}."
            )
    bad = [p for p in probe if p["pixels_seen"] < 1]
    if bad:
        p = bad[0]
        lines.append(
            f"- Striding: a stride larger than the kernel (k={p['kernel']}, s={p['stride']}) never sees "
            f"{1 - p['pixels_seen']:.0%} of the pixels, so even with dim_ratio {p['dim_ratio']:.2g} its "
            f"pseudo-inverse misses {p['pinv_rel_err']:.2g} of the image energy (the probe table)."
        )
    return "\n".join(lines) or "Not enough variants ran for a side-by-side comparison."
