"""F2 in the rnn experiment: the reset-gate cell overfits the forgetting task, against an Elman control; the
gate and the state are read at `<reset>`, the held-out prefixes tested, and the verdict written from them."""

from typing import TYPE_CHECKING, Any

from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.report import figures
from torchdojo.rnn.plots import gate_map
from torchdojo.rnn.reset_demo import (
    KEY,
    RESET,
    ResetTask,
    accuracy,
    gate_and_norms,
    make_reset_task,
    overfit,
    read_gate,
    state_spread,
)

if TYPE_CHECKING:  # the experiments package imports this module: no import back at run time
    from torchdojo.experiments.base import Context


def reset_train_config(cfg: Any, n_examples: int) -> TrainConfig:
    """The reset-gate demo's own TrainConfig (outside the `train` group): full-batch Adam at `reset_lr` for at
    most `reset_steps` steps, fp32 everywhere (a handful of sentences: nothing to gain from bf16)."""
    return TrainConfig(
        epochs=cfg.reset_steps,
        batch_size=n_examples,
        eval_batch_size=n_examples,
        optimizer="adam",
        lr=cfg.reset_lr,
        amp=False,
        channels_last=False,
        cpu_fusion=False,
    )


def f2_reset_gate(cfg: Any, ctx: "Context") -> dict[str, Any]:
    """F2: the reset-gate cell overfits a task where only what follows `<reset>` decides the label (stage
    `reset-overfit`), an Elman cell of the same size the same examples as the control without a gate
    (`reset-control-elman`); the gate and the state are read at `<reset>` and the held-out prefixes tested."""
    task = make_reset_task(cfg.reset_prefixes, cfg.seed)
    tcfg = reset_train_config(cfg, len(task.examples))
    fits, measured = {}, {}
    for cell, stage in (("reset", "reset-overfit"), ("elman", "reset-control-elman")):
        # quiet: one console line per full-batch step would be hundreds of lines; one summary line instead
        model, res = overfit(
            task,
            tcfg,
            cell,
            hidden=cfg.reset_hidden,
            embed_dim=cfg.reset_hidden,
            seed=cfg.seed,
            device=ctx.device,
            stage=stage,
            run=ctx.run,
            resume=ctx.resume,
            verbose=False,
        )
        fits[cell] = (model, res)
        h = res.history
        measured[cell] = {
            "train_acc": accuracy(model, task),
            "unseen_prefix_acc": accuracy(model, task, unseen=True),
            "steps": len(h),
            "reached_target": res.stopped_early,
            "final_loss": h[-1]["train_loss"],
            **gate_and_norms(model, task),
            "spread": state_spread(model, task),
        }
        ctx.log(
            f"[{stage}] {len(h)} steps: train_loss {h[-1]['train_loss']:.4f} train_acc "
            f"{h[-1]['train_acc']:.4f}" + (" (target reached)" if res.stopped_early else "")
        )
    example = next(t for t, y in task.examples if KEY in t[: t.index(RESET)] and y == 0)
    g = read_gate(fits["reset"][0], example, task.vocab)
    gate_map(
        g["tokens"],
        g["gate"],
        g["state_norm"],
        ctx.run.figure_path("reset_gate"),
        title="reset-gate cell: R_t per unit and token, and ||h_t||",
    )
    figures.line_plot(
        {
            "reset cell": (
                [r["epoch"] for r in fits["reset"][1].history],
                [r["train_loss"] for r in fits["reset"][1].history],
            ),
            "elman control": (
                [r["epoch"] for r in fits["elman"][1].history],
                [r["train_loss"] for r in fits["elman"][1].history],
            ),
        },
        ctx.run.figure_path("reset_overfit"),
        "step (full batch = one epoch)",
        "cross-entropy",
        logy=True,
        title=f"overfitting {len(task.examples)} compositions",
    )
    verdict = _forgetting_verdict(measured)
    _report_reset(task, measured, verdict, tcfg, cfg, ctx)
    r, e = measured["reset"], measured["elman"]
    return {
        **{k: v for k, v in r.items() if k != "spread"},
        "spread_ratio": r["spread"]["ratio"],
        "elman": {k: v for k, v in e.items() if k != "spread"},
        "elman_spread_ratio": e["spread"]["ratio"],
        "learned_to_reset": verdict[0],
        "learned_to_reset_reason": verdict[1],
    }


RESET_CLOSED = 0.5  # the gate "resets" when its mean at <reset> is under this fraction of its mean elsewhere


def _forgetting_verdict(m: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """Did the reset cell learn to forget at `<reset>`? From the gate, the prefix dependence of the state and
    the held-out prefixes, against the Elman control."""
    r, e = m["reset"], m["elman"]
    closed = r["gate_at_reset"] < RESET_CLOSED * r["gate_elsewhere"]
    forgot = r["spread"]["ratio"] < 0.5
    facts = (
        f"mean R_t {r['gate_at_reset']:.2f} at {RESET} vs {r['gate_elsewhere']:.2f} elsewhere (its most closed unit "
        f"{r['gate_min_unit_at_reset']:.2f}); the state's dependence on the prefix at {RESET} is "
        f"{r['spread']['ratio']:.2f} of what it was just before"
    )
    if closed and forgot:
        return True, f"it learned to reset: {facts}"
    why = f"it did not learn to reset fully: {facts}. " + (
        f"The Elman control, with no gate, fits the same compositions too ({e['train_acc']:.0%} training, "
        f"{e['unseen_prefix_acc']:.0%} on held-out prefixes): an input weight on {RESET} large enough to "
        "saturate tanh overwrites the state as well as a closed gate does, so forgetting by the gate was not "
        "needed to fit this task"
        if e["train_acc"] == 1.0
        else f"The Elman control reaches only {e['train_acc']:.0%} of the training compositions"
    )
    return False, why


def _report_reset(
    task: ResetTask,
    m: dict[str, dict[str, Any]],
    verdict: tuple[bool, str],
    tcfg: TrainConfig,
    cfg: Any,
    ctx: "Context",
) -> None:
    rep = ctx.report
    rep.heading("F2. The reset-gate cell")
    rep.text(
        "Candidate c_t = tanh(W_ih x_t + W_hh h_{t-1} + b) as in an Elman cell; reset R_t = sigmoid(W_r x_t "
        "+ b_r), a function of the current token only; h_t = c_t * R_t. Why sigmoid: the gate must reach 0 "
        "(the product is ~0 whatever the candidate: the state is wiped and the next step starts afresh) and "
        "1 (the candidate passes unchanged), smoothly so it can be learned by gradient descent, and never "
        "flip the state's sign; tanh would allow a negative 'reset' that inverts the state, ReLU is unbounded "
        "above and has no gradient once it is off."
    )
    r, e = m["reset"], m["elman"]
    reached = "reached" if r["reached_target"] else f"did not reach, within {cfg.reset_steps} steps,"
    rep.text(
        f"The task is built so that only what follows {RESET} decides the label: {cfg.reset_prefixes} prefixes "
        f"and {cfg.reset_prefixes} suffixes of 3-6 words, half of each containing the key word '{KEY}'; every "
        f"prefix with every suffix gives {len(task.examples)} training compositions `prefix {RESET} suffix`, "
        f"labelled 1 when '{KEY}' is in the suffix. Identical suffixes follow different prefixes (same label) "
        f"and identical prefixes precede different suffixes (different labels), and a '{KEY}' in the prefix "
        f"misleads a cell that remembers across {RESET}. {cfg.reset_prefixes} more prefixes are held out: a cell "
        f"that wipes its state at {RESET} classifies their {len(task.unseen)} compositions right for free. Both "
        f"cells have {cfg.reset_hidden} hidden units and train full-batch Adam (lr {cfg.reset_lr}) up to "
        f"{cfg.reset_steps} steps, to 100% training accuracy and a loss under 0.01: the reset cell {reached} "
        f"that target in {r['steps']} steps."
    )
    rep.table(
        [
            {
                "cell": name,
                "steps": v["steps"],
                "train acc": v["train_acc"],
                "held-out prefixes acc": v["unseen_prefix_acc"],
                f"R_t at {RESET}": v.get("gate_at_reset", "n/a (no gate)"),
                "R_t elsewhere": v.get("gate_elsewhere", "n/a"),
                f"||h|| before {RESET}": v["norm_before"],
                f"||h|| at {RESET}": v["norm_at"],
                "prefix dependence at reset (ratio)": v["spread"]["ratio"],
            }
            for name, v in (("reset", r), ("elman (control)", e))
        ],
        caption=f"what each cell learned; prefix dependence = spread of the state over prefixes at {RESET} / "
        "just before it (0: the prefix is forgotten)",
    )
    (rep.text if verdict[0] else rep.warning)(f"Measured: {verdict[1]}.")
    rep.table(
        [{"setting": k, "value": v} for k, v in hyper_parameters(tcfg).items()],
        caption="what both overfitting stages trained with (the demo's own reset_* settings)",
    )
    rep.figure(
        "reset_gate.png",
        f"one composition with '{KEY}' in its prefix: R_t per hidden unit and token (top); mean "
        "R_t and ||h_t|| per token (bottom)",
    )
    rep.figure("reset_overfit.png", "training loss per full-batch step of both cells")
