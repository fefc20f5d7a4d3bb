"""F3 in the rnn experiment: the hidden-state norm along test sentences for each trained cell, and whether it is
bounded, measured: "bounded" only when the norm stays under a stated bound and levels off by the end."""

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from torchdojo.report import figures
from torchdojo.rnn.model import Trace
from torchdojo.rnn.train import fixed_length_batch

if TYPE_CHECKING:  # the experiments package imports this module
    from torchdojo.experiments.base import Context

LEVELS_OFF = 1.1  # "levels off": the norm at the end is at most this many times its value at the middle


def norm_verdict(norms: Sequence[float], hidden: int) -> dict[str, Any]:
    """Whether one cell's mean state norm per position stays bounded, from the numbers.

    The stated bound is sqrt(hidden): the largest norm a tanh state (every unit in (-1, 1)) can have. A state is
    called bounded only when its norm stays under that bound at every position and levels off (the end is at
    most LEVELS_OFF x the middle); under the bound but still rising is "rising", over it "exceeds the bound"."""
    xs = [float(v) for v in norms]
    if not xs:
        raise ValueError("norm_verdict of no positions")
    bound = math.sqrt(hidden)
    start, mid, end, peak = xs[0], xs[len(xs) // 2], xs[-1], max(xs)
    late = end / mid if mid > 0 else math.inf
    out: dict[str, Any] = {"start": start, "end": end, "max": peak, "bound": bound}
    out["end_over_start"] = end / start if start > 0 else None  # None, not inf: summary.json is strict JSON
    out["end_over_middle"] = late if math.isfinite(late) else None
    seen = f"||h|| {start:.3g} at the first token, {end:.3g} at the last, at most {peak:.3g}"
    if not all(math.isfinite(v) for v in xs) or peak >= bound:
        out.update(verdict="exceeds the bound", bounded=False, text=f"{seen}: over the bound sqrt(H) = {bound:.3g}")
    elif late > LEVELS_OFF:
        out.update(
            verdict="rising",
            bounded=False,
            text=f"{seen}: under sqrt(H) = {bound:.3g} over these {len(xs)} tokens but still rising at the end "
            f"(x{late:.2f} over the second half), so these tokens cannot show that it stays bounded",
        )
    else:
        out.update(
            verdict="bounded",
            bounded=True,
            text=f"{seen}: under sqrt(H) = {bound:.3g} at every position and level at the end "
            f"(x{late:.2f} over the second half)",
        )
    return out


def f3_state_norms(data: Any, cells: Mapping[str, Any], cfg: Any, ctx: "Context") -> dict[str, dict[str, Any]]:
    """F3 (and the other cells): the mean hidden-state norm along test sentences of one length, and each cell's
    `norm_verdict`; a warning for every Lipschitz cell whose state is not measured bounded."""
    fixed = fixed_length_batch(data.seqs["test"], data.labels["test"], cfg.grad_length)
    if fixed is None:
        return {}
    ids, lens, _ = (v.to(ctx.device) for v in fixed)
    norms = {}
    for cell, t in cells.items():
        if cell == "torch":
            continue  # fused: states not exposed
        t.model.eval()
        trace = Trace()
        with torch.no_grad():
            t.model.encode(ids, lens, trace=trace)
        norms[cell] = trace.state_norms().mean(0).tolist()
    if not norms:
        return {}
    positions = list(range(cfg.grad_length))
    figures.line_plot(
        {c: (positions, v) for c, v in norms.items()},
        ctx.run.figure_path("state_norms"),
        "token position k",
        "mean ||h_k||",
        title="hidden state norm along the sentence (trained models)",
    )
    verdicts = {c: norm_verdict(v, cfg.hidden_size) for c, v in norms.items()}
    _report(verdicts, len(ids), cfg, ctx)
    return verdicts


def _report(verdicts: dict[str, dict[str, Any]], n: int, cfg: Any, ctx: "Context") -> None:
    rep = ctx.report
    rep.heading("F3. Lipschitz RNN: hidden state norms")
    rep.text(
        "h_{t+1} = A h_t + tanh(W h_t + U x_{t+1} + b). The plain form has free A and W: nothing in it limits "
        "A h, so nothing guarantees the state norm. The structured form builds A and W as (1 - beta)(M + M^T) + "
        "beta (M - M^T) - gamma I (nearly skew-symmetric, eigenvalues near the imaginary axis shifted left by "
        "gamma) and takes a small Euler step eps: it is designed to change the state slowly, which does not by "
        "itself bound it. Elman states lie in (-1, 1)^H by tanh, so their norm is under sqrt(H) by construction. "
        f"Measured on {n} test sentences cut to {cfg.grad_length} tokens, with each cell's best weights; the "
        f"stated bound is sqrt(H) = {math.sqrt(cfg.hidden_size):.3g} (H = "
        f"{cfg.hidden_size}), and a state is called bounded only when its norm stays under it at every position "
        f"and levels off (the last token at most {LEVELS_OFF:g} x the middle one)."
    )
    rep.table(
        [
            {
                "cell": c,
                "||h|| first token": v["start"],
                "||h|| last token": v["end"],
                "max ||h||": v["max"],
                "last / first": v["end_over_start"],
                "last / middle": v["end_over_middle"],
                "measured": v["verdict"],
            }
            for c, v in verdicts.items()
        ],
        caption=f"mean state norm along the test sentences; bound sqrt(H) = {math.sqrt(cfg.hidden_size):.3g}",
    )
    rep.text("\n".join(f"- {c}: {v['text']}." for c, v in verdicts.items()))
    for c, v in verdicts.items():
        if c.startswith("lipschitz") and not v["bounded"]:
            rep.warning(f"{c}: its state is not measured bounded here ({v['verdict']}): {v['text']}.")
    rep.figure("state_norms.png", "mean ||h_k|| over test sentences of the same length, per cell")
