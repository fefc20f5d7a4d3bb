"""G3's report sections: the design, the corruptions shown, the small-batch overfit, the held-out reconstruction
against copying the input, and the sentiment transfer against the majority baseline, all written from the run's
numbers (`torchdojo.experiments.text_autoencoder` trains; this module says what the training showed).

A classifier whose test accuracy is within noise of (or below) always predicting the test split's majority class
did not learn (`stats.learned`): it is flagged in the report and summary.json and never compared as a result, so
an all-majority predictor is not set against an all-minority one."""

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torchdojo import stats
from torchdojo.autoencoders.corruption import drop_tokens, local_shuffle, mask_tokens
from torchdojo.config import hyper_parameters
from torchdojo.report import figures

if TYPE_CHECKING:  # the experiments package imports this module
    from torchdojo.experiments.base import Context

TRANSFERRED = ("dae-frozen", "dae-finetune")
FITS = 0.99  # the small-batch demo "fits" when its final teacher-forced token accuracy reaches this


def report_design(d: Any, cfg: Any, ctx: "Context") -> None:
    """G3 design: data, preprocessing, architecture, loss and the corruption, with the reasons."""
    unk = sum(i == d.vocab.unk_id for s in d.te for i in s) / max(sum(map(len, d.te)), 1)
    cap = ctx.train_config().max_batches
    capped = f" (at most {cap} batches of them per epoch: train.max_batches)" if cap else ""
    ctx.report.heading("G3. Design")
    ctx.report.text(
        f"Data: {d.data.name} ({d.data.source}): {len(d.dae_texts):,} training sentences for the autoencoder "
        f"(labels unused), {len(d.dae_val_texts):,} for its validation{capped}, {len(d.test):,} held-out test "
        "sentences. "
        f"Preprocessing: lowercase word tokens, URLs -> <url>, @handles -> <user>, punctuation as tokens, at most "
        f"{cfg.max_len} tokens; a {len(d.vocab):,}-word vocabulary (min frequency {cfg.min_freq}) built on the "
        f"training texts only ({unk:.1%} of test tokens are <unk>), with specials <pad>, <unk>, <mask>, <bos>, "
        "<eos>.\n\n"
        f"Architecture: a bidirectional GRU encoder ({cfg.emb}-d embeddings, 2 x {cfg.dim // 2} units) whose final "
        f"states become the sentence vector z = tanh(W [h_fwd; h_bwd]) ({cfg.dim}-d); a GRU decoder ({cfg.dim} units, "
        "initial state from z, z also fed at every step, embeddings shared with the encoder) that regenerates the "
        "clean sentence. Input: the corrupted sentence. Output: a distribution over the vocabulary for each token "
        "of the clean sentence + <eos>, with <bos> + the clean prefix fed in (teacher forcing). Loss: token "
        "cross-entropy over real (non-pad) target tokens (validation: the plain cross-entropy, also when training "
        "smooths the labels). The decoder sees the noisy sentence only through z, so z must carry the sentence's "
        "content: that is the representation transferred to sentiment.\n\n"
        f"Corruption, applied freshly each epoch with a generator seeded by (seed, epoch): local shuffling (each "
        f"{cfg.window}-token window re-ordered with probability {cfg.shuffle}), then token dropout (each token "
        f"deleted with probability {cfg.drop}), then masking (each remaining token -> <mask> with probability "
        f"{cfg.mask}). Why: dropout makes the model infer missing words from context (it is not told where they "
        "were); masking tells it where a word is missing, as in BERT; shuffling within small windows teaches local "
        "word order. The rates leave about three quarters of a sentence intact, so restoring it is possible but "
        "copying is not enough; the window of 3 keeps the sentence readable (no token moves more than 2 places)."
    )


def show_corruptions(d: Any, cfg: Any, ctx: "Context") -> None:
    """One training sentence under each corruption and under all three."""
    ex = d.tr[0] if d.tr else [d.vocab.unk_id]
    r = random.Random(cfg.seed)
    ctx.report.table(
        [
            {"corruption": "clean", "text": d.text(ex)},
            {
                "corruption": f"local shuffle (rate {cfg.shuffle}, window {cfg.window})",
                "text": d.text(local_shuffle(ex, cfg.shuffle, r, cfg.window)),
            },
            {"corruption": f"token dropout (rate {cfg.drop})", "text": d.text(drop_tokens(ex, cfg.drop, r))},
            {"corruption": f"masking (rate {cfg.mask})", "text": d.text(mask_tokens(ex, cfg.mask, d.mask_id, r))},
            {"corruption": "all three (what the model sees)", "text": d.text(d.noise(ex, d.mask_id, r))},
        ],
        caption="one training sentence under each corruption",
    )


def report_overfit(of: list[dict[str, Any]], n: int, lr: float, clip: float, ctx: "Context") -> None:
    """The small-batch demo: loss and token accuracy first -> last, and whether it fit (FITS), from its rows."""
    steps = [r["epoch"] for r in of]
    figures.line_plot(
        {"loss": (steps, [r["train_loss"] for r in of]), "token accuracy": (steps, [r["train_token_acc"] for r in of])},
        ctx.run.figure_path("overfit"),
        "step",
        "value",
        title=f"overfitting {n} sentences (fresh noise every step)",
    )
    first, last = of[0], of[-1]
    ctx.report.heading("Overfitting a small batch")
    said = (
        f"A fresh model trained on {n} sentences only (Adam, lr {lr}, gradient clipping {clip}): loss "
        f"{first['train_loss']:.3f} -> {last['train_loss']:.3f}, token accuracy {first['train_token_acc']:.1%} -> "
        f"{last['train_token_acc']:.1%} after {len(of)} steps. The noise is redrawn every step, so fitting means "
        "undoing it, not memorising one noisy copy."
    )
    ctx.report.text(said)
    if last["train_token_acc"] < FITS:
        ctx.report.warning(
            f"It did not fit the small batch in {len(of)} steps (token accuracy {last['train_token_acc']:.1%}, under "
            f"{FITS:.0%}): this run does not show that the model can learn the mapping; raise overfit_steps."
        )
    ctx.report.figure("overfit.png", "loss and teacher-forced token accuracy on the small batch (training mode)")


def copy_verdict(held: float, copy: float, clean: float, n_sent: int, n_tok: int) -> tuple[bool, str]:
    """Whether the DAE restores more clean tokens than copying its corrupted input, from the two accuracies over
    the same `n_tok` target tokens (a gap within 3 binomial standard errors of the copy rate is no gap)."""
    noise = 3 * (copy * (1 - copy) / max(n_tok, 1)) ** 0.5
    gap = held - copy
    said = (
        f"On {n_sent:,} unseen sentences ({n_tok:,} clean tokens) the model restores {held:.1%} of the clean "
        f"tokens (teacher-forced, <eos> included); copying the corrupted input puts the right token at {copy:.1%} "
        f"of the positions ({stats.fmt_diff(gap, '%')}), and the clean input itself is restored at {clean:.1%}."
    )
    band = f"noise = 3 standard errors = {100 * noise:.1f} points"
    if gap > noise:
        return True, f"{said} It restores more than copying does, beyond noise ({band})."
    return False, (
        f"{said} It does not restore more than copying does beyond noise ({band}): this run does not show that it "
        "undoes the corruption."
    )


def report_heldout(
    res: Any,
    tcfg: Any,
    held: Mapping[str, float],
    clean: Mapping[str, float],
    copy_acc: float,
    examples: list[dict[str, str]],
    te: Sequence[Sequence[int]],
    ctx: "Context",
) -> bool:
    """The held-out reconstruction section: what the DAE trained with, its token accuracy on corrupted and clean
    unseen sentences against copying, the curves, greedy examples, and `copy_verdict`. Returns whether it beat
    copying."""
    figures.curves(
        {"dae": res.history},
        ctx.run.figure_path("dae_curves"),
        keys=("loss", "token_acc"),
        title="denoising autoencoder",
    )
    ctx.report.heading("Held-out reconstruction")
    ctx.report.table(
        [{"setting": k, "value": v} for k, v in hyper_parameters(tcfg).items()]
        + [{"setting": "best epoch (by " + tcfg.monitor + ")", "value": res.best_epoch}],
        caption="what the DAE trained with (stage dae)",
    )
    ctx.report.table(
        [
            {"input": "corrupted (as in training)", "token_acc": held["token_acc"], "loss": held["loss"]},
            {"input": "clean (no corruption)", "token_acc": clean["token_acc"], "loss": clean["loss"]},
            {"input": "baseline: copy the corrupted input", "token_acc": copy_acc, "loss": float("nan")},
        ],
        caption=f"{len(te):,} unseen test sentences; teacher-forced token accuracy over clean tokens + <eos>",
    )
    ctx.report.figure("dae_curves.png", "training and validation (unseen sentences) loss and token accuracy")
    ctx.report.table(examples, caption="unseen test sentences: clean, corrupted, and the DAE's greedy reconstruction")
    n_tok = sum(map(len, te))  # the copy rate's positions
    beats, said = copy_verdict(held["token_acc"], copy_acc, clean["token_acc"], len(te), n_tok)
    (ctx.report.text if beats else ctx.report.warning)(said)
    return beats


def sentiment_learned(
    rows: Sequence[Mapping[str, Any]], hists: Mapping[str, list[dict[str, Any]]], y_test: Sequence[int]
) -> dict[str, tuple[bool, str]]:
    """Each classifier against always predicting the test split's majority class (`stats.learned`, with its
    training loss per epoch)."""
    majority = stats.majority_rate(list(y_test))
    return {
        r["classifier"]: stats.learned(
            float(r["test_acc"]),
            chance_or_majority=majority,
            n_eval=len(y_test),
            loss_history=[h["train_loss"] for h in hists.get(r["classifier"], []) if "train_loss" in h],
        )
        for r in rows
    }


def transfer_text(accs: Mapping[str, float], learned: Mapping[str, tuple[bool, str]]) -> tuple[list[str], list[str]]:
    """The transfer comparisons (each DAE classifier and MiniLM against the from-scratch encoder, through
    `stats.compare`, failed ones flagged) and one sentence on what they answer. Returns (bullets, summary lines)."""
    if "scratch" not in accs:
        return [], ["No from-scratch classifier ran: the transfer question has no control here."]
    pairs = [(n, "scratch") for n in (*TRANSFERRED, "minilm-frozen") if n in accs]
    if not pairs:
        return [], ["No transferred classifier ran: nothing to compare with the from-scratch one."]
    flags: dict[str, bool | str] = {n: True if ok else why for n, (ok, why) in learned.items()}
    cmps = stats.compare({n: [v] for n, v in accs.items()}, learned=flags, pairs=pairs)
    bullets = [c.text for c in cmps]
    failed = [n for n in accs if not learned[n][0]]
    lines = []
    if failed:
        lines.append(
            f"Did not learn (at, within noise of, or below the majority rate): {', '.join(failed)}. A classifier that "
            "did not learn is not compared with another: whether DAE pretraining helps is not answered by it."
        )
    verdicts = {c.verdict for c in cmps if c.a in TRANSFERRED}
    if "better" in verdicts:
        lines.append("The transferred encoder is better than the from-scratch one beyond the seeds' noise.")
    elif verdicts == {"one-seed"} or verdicts == {"one-seed", "did-not-learn"}:
        lines.append("One seed cannot decide whether DAE pretraining helps here: run with --seeds N (e.g. --seeds 5).")
    return bullets, lines


def report_sentiment(
    rows: list[dict[str, Any]],
    hists: dict[str, list[dict[str, Any]]],
    lab: Any,
    d: Any,
    dae_eval: dict[str, Any],
    cfg: Any,
    ctx: "Context",
) -> dict[str, tuple[bool, str]]:
    """The transfer section: design, hyper-parameters, results against the majority baseline, curves, and the
    comparisons with the from-scratch encoder. Returns each classifier's (learned, why)."""
    tcfg = ctx.train_config(group="clf")
    y_te = lab.labels["test"]
    majority = stats.majority_rate(y_te)
    n_lab = len(lab.labels["train"]) + len(lab.labels["val"])
    ctx.report.heading("Sentiment transfer")
    ctx.report.text(
        f"Task: {' vs '.join(d.data.classes)} on the same {len(y_te):,} test tweets (always predicting the majority "
        f"class scores {majority:.1%}). Every classifier puts the same MLP head (dropout, {cfg.dim} ReLU units, "
        f"dropout, linear) on a sentence vector and trains on the same {len(lab.labels['train']):,} labelled tweets, "
        f"with {len(lab.labels['val']):,} more for validation (the best epoch by {tcfg.monitor} is tested): equal "
        f"budget. Design: the DAE was trained on {len(d.dae_texts):,} training tweets without labels, so the transfer "
        f"tests whether that unlabelled pretraining helps when labels are few ({n_lab:,}); the frozen encoder shows "
        "what z already encodes, fine-tuning lets it adapt (at a lower learning rate, clf.lr x "
        f"{cfg.finetune_lr_scale}), the from-scratch encoder of the same size is the control, and MiniLM, a "
        "sentence encoder pretrained on a billion sentence pairs, is an outside reference."
    )
    ctx.report.table(
        [{"setting": k, "value": v} for k, v in hyper_parameters(tcfg).items()],
        caption="what every classifier trained with (group clf; stages clf-<classifier>)",
    )
    learned = sentiment_learned(rows, hists, y_te)
    ctx.report.table(
        [{**r, "majority_rate": majority, "learned": learned[r["classifier"]][0]} for r in rows],
        caption="each sentiment classifier: validation accuracy of its best epoch, test accuracy, and whether it "
        "is beyond noise of the majority rate",
    )
    for name, (ok, why) in learned.items():
        if not ok:
            ctx.report.warning(f"{name} did not learn: {why}.")
    if hists:
        figures.curves(hists, ctx.run.figure_path("clf_curves"), title="sentiment classifiers")
        ctx.report.figure("clf_curves.png", "training and validation loss and accuracy of each classifier")
    bullets, lines = transfer_text({r["classifier"]: r["test_acc"] for r in rows}, learned)
    dae_note = (
        f"The DAE itself restored {dae_eval['held']:.1%} of held-out tokens against {dae_eval['copy']:.1%} for "
        "copying its input" + ("." if dae_eval["beats_copy"] else ", no more than copying does (see above).")
    )
    ctx.report.text("\n".join(f"- {b}" for b in bullets) + ("\n\n" if bullets else "") + " ".join([*lines, dae_note]))
    return learned
