"""F4 in the rnn experiment: no clipping vs clipping by norm vs by value from the same exploding initial weights,
each run checked against the majority-class rate (`stats.learned`), and the reading written from the numbers."""

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torchdojo import stats
from torchdojo.report import figures
from torchdojo.rnn.clipping import ClipRun, clipping_study

if TYPE_CHECKING:  # the experiments package imports this module
    from torchdojo.experiments.base import Context


def loss_ends(losses: Sequence[float], share: float = 0.1) -> list[float]:
    """The mean training loss of the first and of the last `share` of the steps (at least one step each): a
    mini-batch loss per step is too noisy to compare one step with another."""
    xs = [float(v) for v in losses]
    if len(xs) < 2:
        return xs
    k = max(1, int(len(xs) * share))
    return [sum(xs[:k]) / k, sum(xs[-k:]) / k]


def run_learned(row: dict[str, Any], losses: Sequence[float], majority: float, n_eval: int) -> tuple[bool, str]:
    """Whether one clipping run learned: it diverged, its loss did not fall, or its test accuracy is within noise
    of always predicting the majority class (`stats.learned`)."""
    if row["diverged_at"] != "-":
        return False, f"diverged: the loss or gradient was not finite at step {row['diverged_at']}"
    acc = row["test_acc"]
    if acc is None or not math.isfinite(acc):
        return False, "no test accuracy (its weights are not finite)"
    return stats.learned(acc, chance_or_majority=majority, n_eval=n_eval, loss_history=loss_ends(losses))


def reading(rows: list[dict[str, Any]]) -> str:
    """What the clipping runs show, from their own numbers: how much each clipped run shrank and turned its
    steps, and how its summed updates point against the summed raw gradients."""
    lines = []
    for r in rows:
        if r["clip"] == "none":
            lines.append(
                f"- {r['run']}: raw gradient norm up to {r['max_raw_grad_norm']:.3g}, final loss "
                f"{r['final_loss']:.3g}" + (f", diverged at step {r['diverged_at']}" if r["diverged_at"] != "-" else "")
            )
            continue
        kept = "kept" if r["min_cos"] > 0.999 else "changed"
        lines.append(
            f"- {r['run']}: median step shrink ||applied||/||raw|| {r['median_scale']:.3g}; direction {kept} "
            f"(cos to the raw gradient: median {r['median_cos']:.3f}, lowest {r['min_cos']:.3f}); the summed updates "
            f"point at cos {r['sum_cos']:.3f} to the summed raw gradients"
            + (
                " (< 1: the steps with large gradients counted for less)"
                if r["sum_cos"] < 0.999 and kept == "kept"
                else ""
            )
        )
    return "\n".join(lines)


def f4_clipping(data: Any, cfg: Any, ctx: "Context") -> list[dict[str, Any]]:
    """F4: the three runs, each against the majority-class rate of the test split (warned when within noise of
    it), and the reading of the curves. Its own SGD loop and `clip_*` settings, no `train.*` ones."""
    ctx.log("== clipping study")
    dev = ctx.device
    runs = clipping_study(
        data.batches("train", cfg.clip_batch_size, cfg.seed, dev),
        data.batches("test", cfg.clip_batch_size, cfg.seed, dev),
        len(data.vocab),
        len(data.classes),
        radius=cfg.clip_radius,
        lr=cfg.clip_lr,
        max_steps=cfg.clip_steps,
        norm_threshold=cfg.clip_norm,
        value_threshold=cfg.clip_value,
        seed=cfg.seed,
        device=dev,
    )
    _clip_figures(runs, ctx)
    majority, n_eval = stats.majority_rate(data.labels["test"]), len(data.labels["test"])
    rows = []
    for r in runs:
        row = r.summary()
        row["majority_rate"] = majority
        ok, why = run_learned(row, [s["loss"] for s in r.steps], majority, n_eval)
        rows.append({**row, **stats.learned_entry(ok, why)})
    _report(rows, majority, cfg, ctx)
    return rows


def _report(rows: list[dict[str, Any]], majority: float, cfg: Any, ctx: "Context") -> None:
    rep = ctx.report
    rep.heading("F4. Gradient clipping")
    rep.text(
        f"Exploding setting: the Elman classifier with ReLU and its recurrent matrix set to {cfg.clip_radius} x "
        f"a random orthogonal matrix, so states and gradients can grow like {cfg.clip_radius}^T over a sentence "
        f"(up to {cfg.max_len} tokens). Plain SGD, lr {cfg.clip_lr}, {cfg.clip_steps} steps of "
        f"{cfg.clip_batch_size} training sentences, from the same initial weights: no clipping, clipping the "
        f"global norm at {cfg.clip_norm}, clipping each entry to [-{cfg.clip_value}, {cfg.clip_value}]. With "
        "SGD the applied gradient is the step itself. The study has its own loop and clip_* settings (none "
        "of train.*): it reads the raw gradient between backward and clipping. test_acc is on the test split "
        f"after the last step (none when the run diverged), next to always predicting the majority class "
        f"({majority:.1%} of the test split); learned says whether a run is beyond noise of that rate."
    )
    rep.table(
        rows,
        caption="clipping study (median/min over steps; sum_cos = cos between the sum of raw "
        "gradients and the sum of applied ones over the run)",
        columns=[c for c in rows[0] if c != "learned_reason"] if rows else None,
    )
    for r in rows:
        if not r["learned"]:
            rep.warning(f"{r['run']} did not learn: {r['learned_reason']}.")
    rep.figure("clip_loss.png", "training loss per step: what clipping prevents")
    rep.figure("clip_raw_norm.png", "raw gradient norm per step (before clipping)")
    rep.figure("clip_cos.png", "direction kept? cosine between the raw and the applied gradient")
    rep.figure("clip_scale.png", "step shrink: applied norm / raw norm")
    rep.text("Reading the runs:\n" + reading(rows))
    failed = [r["run"] for r in rows if not r["learned"]]
    if failed:
        rep.text(
            f"Accuracy cannot rank the runs that did not learn ({', '.join(failed)}): what this study shows about "
            "them is the gradients above, not which clipping trains a better classifier."
        )


def _clip_figures(runs: list[ClipRun], ctx: "Context") -> None:
    for key, label, logy in (
        ("loss", "training loss", True),
        ("raw_norm", "||g|| before clipping", True),
        ("cos", "cos(raw g, applied g)", False),
        ("scale", "||applied|| / ||raw||", True),
    ):
        figures.line_plot(
            {r.name: ([s["step"] for s in r.steps], [s[key] for s in r.steps]) for r in runs},
            ctx.run.figure_path(f"clip_{key}"),
            "SGD step",
            label,
            logy=logy,
        )
