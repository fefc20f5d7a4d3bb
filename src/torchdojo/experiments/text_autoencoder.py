"""A denoising text autoencoder (MISSION G3): corrupt tweets, learn to restore them through a sentence vector,
overfit a small batch, measure held-out token accuracy, then reuse the encoder for sentiment classification
(frozen and fine-tuned) against a from-scratch encoder of the same size and the pretrained MiniLM.

Every stage trains through `torchdojo.engine.fit`: `dae-overfit` (the demo, sized by this experiment's own
`overfit_*` fields), `dae` (the `train` group) and `clf-<classifier>` (the `clf` group). The report sections,
written from the run's numbers (each classifier against the majority baseline, the DAE against copying), are in
`torchdojo.autoencoders.text_report`.
"""

import copy
import dataclasses
import random
from typing import Any

import torch

from torchdojo import stats
from torchdojo.autoencoders.corruption import Corruption
from torchdojo.autoencoders.text_dae import (
    SentenceEncoder,
    SentimentClassifier,
    TextDAE,
    dae_vocab,
    encode_texts,
    mlp_head,
)
from torchdojo.autoencoders.text_report import (
    TRANSFERRED,
    report_design,
    report_heldout,
    report_overfit,
    report_sentiment,
    show_corruptions,
)
from torchdojo.autoencoders.text_train import (
    DAEBatches,
    FeatureBatches,
    clf_step,
    dae_step,
    evaluate_dae,
    feature_step,
    minilm_embeddings,
    sentiment_params,
)
from torchdojo.config import TrainConfig
from torchdojo.data import random_subset, stratified_split
from torchdojo.engine import FitResult, evaluate, fit
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context
from torchdojo.seeds import SeedSpec
from torchdojo.text import TextBatches, TextSplits, Vocab, load_text_dataset, pad_batch

MISSION_IDS = ("G3",)
COMPARE = SeedSpec(regimes="classifiers", pairs="all")  # --seeds N: the sentiment classifiers each against each
SUMMARY = "denoising text autoencoder (GRU seq2seq) and its encoder transferred to sentiment classification"
CLASSIFIERS = ("dae-frozen", "dae-finetune", "scratch", "minilm-frozen")
_NO_4D = "token batches are 2-D (batch, time) and the models (embeddings, GRUs, linear layers) have no convolutions"
_NO_FUSION = "no BatchNorm -> ReLU -> max-pool block to fuse: the models are embeddings, GRUs and linear layers"
UNUSED: dict[str, str] = {
    "train.channels_last": _NO_4D,
    "train.cpu_fusion": _NO_FUSION,
    "clf.channels_last": _NO_4D,
    "clf.cpu_fusion": _NO_FUSION,
}
# Stages sized by the experiment's own fields, not by a TrainConfig group.
OWN_STAGES = {"dae-overfit": "one small batch, overfit_steps epochs at overfit_lr (overfit_sentences sentences)"}
OVERFIT_GRAD_CLIP = 1.0  # the demo clips like the DAE does


def _dae_train_config() -> TrainConfig:
    return TrainConfig(
        epochs=6, batch_size=64, lr=2e-3, grad_clip=1.0, monitor="val_loss", channels_last=False, cpu_fusion=False
    )


def _clf_train_config() -> TrainConfig:
    return TrainConfig(epochs=8, batch_size=64, lr=2e-3, channels_last=False, cpu_fusion=False)


@dataclasses.dataclass
class Config:
    dataset: str = "tweets"
    max_len: int = 32  # tokens kept per sentence (95% of tweets have <= 31)
    min_freq: int = 2
    max_vocab: int = 8000
    emb: int = 64
    dim: int = 128  # sentence vector z; the GRU decoder's state
    drop: float = 0.1
    mask: float = 0.15
    shuffle: float = 0.3
    window: int = 3
    dae_subset: int = 0  # training sentences for the DAE (0 = all of the training split)
    val_fraction: float = 0.1  # held out for validation: of the DAE's sentences, and of the labelled ones
    overfit_sentences: int = 32
    overfit_steps: int = 200  # the demo's epochs: one batch (all of its sentences) each, fresh noise each
    overfit_lr: float = 5e-3
    labeled: int = 1000  # labelled sentences for sentiment, validation included (0 = all): the transfer regime
    test_subset: int = 0  # test sentences (0 = all)
    classifiers: tuple[str, ...] = CLASSIFIERS
    finetune_lr_scale: float = 0.3  # the pretrained encoder learns at clf.lr x this when fine-tuned
    seed: int = 0
    train: TrainConfig = dataclasses.field(default_factory=_dae_train_config)  # the DAE
    clf: TrainConfig = dataclasses.field(default_factory=_clf_train_config)  # the sentiment classifiers

    def __post_init__(self) -> None:
        for c in self.classifiers:
            if c not in CLASSIFIERS:
                raise DojoError(f"unknown classifier {c!r}", f"classifiers: {', '.join(CLASSIFIERS)}")
        if self.dim % 2:
            raise DojoError(f"dim must be even (two GRU directions), got {self.dim}", "e.g. --set dim=128")
        for name in ("max_len", "emb", "dim", "overfit_sentences", "overfit_steps"):
            if getattr(self, name) < 1:
                raise DojoError(f"{name} must be >= 1, got {getattr(self, name)}", f"e.g. --set {name}=8")
        if self.overfit_lr <= 0:
            raise DojoError(f"overfit_lr must be > 0, got {self.overfit_lr}", "e.g. --set overfit_lr=5e-3")
        Corruption(self.drop, self.mask, self.shuffle, self.window)  # checks the rates and the window


SCALES = {
    "smoke": {
        "dae_subset": 256,
        "emb": 16,
        "dim": 32,
        "overfit_sentences": 8,
        "overfit_steps": 5,
        "labeled": 128,
        "test_subset": 128,
        "classifiers": "dae-frozen,scratch",
        "max_vocab": 500,
        "train": {"epochs": 1, "max_batches": 2},
        "clf": {"epochs": 1, "max_batches": 2},
    },
    # 2 CPU cores: the 4k-way output softmax dominates, so the small scale trims vocabulary and DAE data.
    "small": {"max_vocab": 4000, "dae_subset": 8000, "overfit_steps": 100, "test_subset": 2000, "train": {"epochs": 8}},
    "full": {"emb": 128, "dim": 256, "labeled": 0, "max_vocab": 20000, "train": {"epochs": 15}, "clf": {"epochs": 10}},
}


@dataclasses.dataclass
class TextData:
    """The DAE's data: texts, vocabulary, encoded splits (train / validation / test) and the noise process."""

    data: TextSplits
    vocab: Vocab
    dae_texts: list[str]
    dae_val_texts: list[str]
    test: list[tuple[str, int]]
    tr: list[list[int]]
    va: list[list[int]]
    te: list[list[int]]
    noise: Corruption
    max_len: int

    @property
    def mask_id(self) -> int:
        return self.vocab.stoi["<mask>"]

    def encode(self, texts: list[str]) -> list[list[int]]:
        return encode_texts(texts, self.vocab, self.max_len)

    def text(self, ids: list[int]) -> str:
        return " ".join(self.vocab.decode(ids))

    def batches(self, seqs: list[list[int]], batch_size: int, seed: int, train: bool) -> DAEBatches:
        v = self.vocab
        return DAEBatches(
            seqs,
            self.noise,
            self.mask_id,
            batch_size,
            seed=seed,
            train=train,
            pad_id=v.pad_id,
            bos_id=v.stoi["<bos>"],
            eos_id=v.stoi["<eos>"],
        )

    def new_dae(self, cfg: Config, seed: int, device: torch.device) -> TextDAE:
        torch.manual_seed(seed)
        v = self.vocab
        return TextDAE(len(v), cfg.emb, cfg.dim, v.pad_id, v.stoi["<bos>"], v.stoi["<eos>"]).to(device)


def prepare_data(cfg: Config, ctx: Context) -> TextData:
    """Seeded splits: DAE validation (val_fraction of the shuffled training split, at least 32), DAE training
    texts (optionally a subset), test subset; the vocabulary from the DAE's training texts only."""
    data = load_text_dataset(cfg.dataset, data_dir=ctx.data_dir, download=ctx.download, seed=cfg.seed)
    train_pairs = list(data.train)
    random.Random(cfg.seed).shuffle(train_pairs)
    n_val = max(int(len(train_pairs) * cfg.val_fraction), 32)
    dae_val_texts = [t for t, _ in train_pairs[:n_val]]
    dae_texts = [t for t, _ in random_subset(train_pairs[n_val:], cfg.dae_subset, cfg.seed)]
    test = random_subset(list(data.test), cfg.test_subset, cfg.seed + 1)
    vocab = dae_vocab(dae_texts, cfg.min_freq, cfg.max_vocab)
    tr, va, te = (encode_texts(t, vocab, cfg.max_len) for t in (dae_texts, dae_val_texts, [t for t, _ in test]))
    noise = Corruption(cfg.drop, cfg.mask, cfg.shuffle, cfg.window)
    ctx.run.write_json("vocab.json", {"itos": vocab.itos})  # the DAE checkpoints' token ids
    return TextData(data, vocab, dae_texts, dae_val_texts, test, tr, va, te, noise, cfg.max_len)


def overfit_small_batch(d: TextData, cfg: Config, ctx: Context) -> list[dict[str, Any]]:
    """A fresh DAE trained on `overfit_sentences` sentences only, one batch per epoch with fresh noise each, for
    `overfit_steps` epochs (stage `dae-overfit`, outside the groups); the report says whether it fit."""
    small = d.tr[: cfg.overfit_sentences]
    tcfg = TrainConfig(
        epochs=cfg.overfit_steps,
        batch_size=len(small),
        lr=cfg.overfit_lr,
        grad_clip=OVERFIT_GRAD_CLIP,
        monitor="val_loss",
        channels_last=False,
        cpu_fusion=False,
    )
    ctx.log(f"== overfitting {len(small)} sentences for {cfg.overfit_steps} steps")
    model = d.new_dae(cfg, cfg.seed, ctx.device)
    res = fit(
        model,
        d.batches(small, len(small), cfg.seed + 7, train=True),
        None,
        tcfg,
        device=ctx.device,
        stage="dae-overfit",
        run=ctx.run,
        resume=ctx.resume,
        step=dae_step(d.vocab.pad_id),
        verbose=False,
    )
    of = res.history
    ctx.log(
        f"[dae-overfit] loss {of[0]['train_loss']:.3f} -> {of[-1]['train_loss']:.3f}, token accuracy "
        f"{of[0]['train_token_acc']:.3f} -> {of[-1]['train_token_acc']:.3f}"
    )
    report_overfit(of, len(small), cfg.overfit_lr, OVERFIT_GRAD_CLIP, ctx)
    return of


def train_dae(d: TextData, cfg: Config, ctx: Context) -> tuple[TextDAE, FitResult, TrainConfig]:
    """The DAE on the whole training split (stage `dae`, group `train`), validated on unseen sentences with
    fixed noise; the best epoch (by `train.monitor`, validation loss by default) is kept."""
    tcfg = ctx.train_config()
    dae = d.new_dae(cfg, cfg.seed + 1, ctx.device)
    ctx.log(f"== DAE: {sum(p.numel() for p in dae.parameters()):,} params, {len(d.tr):,} sentences")
    res = fit(
        dae,
        d.batches(d.tr, tcfg.batch_size, cfg.seed, train=True),
        d.batches(d.va, tcfg.eval_batch_size, cfg.seed + 17, train=False),
        tcfg,
        device=ctx.device,
        stage="dae",
        run=ctx.run,
        resume=ctx.resume,
        step=dae_step(d.vocab.pad_id, tcfg.label_smoothing),
        val_step=dae_step(d.vocab.pad_id),
        verbose=ctx.verbose,
    )
    return dae, res, tcfg


def heldout_evaluation(
    dae: TextDAE, res: FitResult, tcfg: TrainConfig, d: TextData, cfg: Config, ctx: Context
) -> dict[str, float]:
    """Teacher-forced token accuracy on unseen test sentences (corrupted as in training, and clean) against
    copying the corrupted input, the curves, and greedy reconstructions."""
    held = evaluate_dae(dae, d.te, d.noise, d.mask_id, cfg.seed + 99, ctx.device, tcfg.eval_batch_size)
    clean_ev = evaluate_dae(dae, d.te, Corruption(0, 0, 0), d.mask_id, 0, ctx.device, tcfg.eval_batch_size)
    noisy_te = d.noise.batch(d.te, d.mask_id, cfg.seed + 99)  # the noise `held` was measured with
    copy_acc = sum(sum(a == b for a, b in zip(n, c, strict=False)) for n, c in zip(noisy_te, d.te, strict=True)) / max(
        sum(map(len, d.te)), 1
    )
    k = min(8, len(d.te))
    ids, lengths, _ = pad_batch(noisy_te[:k], d.vocab.pad_id)
    dae.eval()
    gen = dae.generate(ids.to(ctx.device), lengths.to(ctx.device), cfg.max_len + 1)
    examples = [
        {"clean": d.text(d.te[i]), "noisy": d.text(noisy_te[i]), "reconstructed (greedy)": d.text(gen[i])}
        for i in range(k)
    ]
    beats = report_heldout(res, tcfg, held, clean_ev, copy_acc, examples, d.te, ctx)
    ctx.report.save(ctx.run.path)
    return {
        "held": held["token_acc"],
        "held_loss": held["loss"],
        "clean": clean_ev["token_acc"],
        "copy": copy_acc,
        "beats_copy": beats,
    }


@dataclasses.dataclass
class Labelled:
    """The sentiment data: labelled training / validation sentences (stratified, seeded) and the test set."""

    texts: dict[str, list[str]]  # "train", "val", "test"
    labels: dict[str, list[int]]
    ids: dict[str, list[list[int]]]
    pad_id: int

    def batches(self, split: str, tcfg: TrainConfig, seed: int) -> TextBatches:
        train = split == "train"
        return TextBatches(
            self.ids[split],
            self.labels[split],
            tcfg.batch_size if train else tcfg.eval_batch_size,
            shuffle=train,
            seed=seed,
            pad_id=self.pad_id,
        )


def sentiment_data(d: TextData, cfg: Config) -> Labelled:
    """`labeled` labelled training sentences (seeded), val_fraction of them held out (stratified) for early
    stopping and the best epoch; the same test sentences as the DAE's held-out evaluation."""
    lab = random_subset(list(d.data.train), cfg.labeled, cfg.seed + 2)
    tr_idx, va_idx = stratified_split(torch.tensor([y for _, y in lab]), cfg.val_fraction, cfg.seed + 3)
    if not len(va_idx) or not len(tr_idx):
        raise DojoError(
            f"val_fraction={cfg.val_fraction} of labeled={len(lab)} sentences leaves an empty split",
            "raise labeled (or change val_fraction), e.g. --set labeled=128",
        )
    parts = {"train": [lab[i] for i in tr_idx.tolist()], "val": [lab[i] for i in va_idx.tolist()], "test": d.test}
    texts = {k: [t for t, _ in v] for k, v in parts.items()}
    return Labelled(
        texts,
        {k: [y for _, y in v] for k, v in parts.items()},
        {k: d.encode(v) for k, v in texts.items()},
        d.vocab.pad_id,
    )


def _encoder_description(name: str, cfg: Config) -> str:
    return {
        "dae-frozen": "DAE encoder, frozen",
        "dae-finetune": f"DAE encoder, fine-tuned at lr x {cfg.finetune_lr_scale}",
        "scratch": "same architecture, random init",
        "minilm-frozen": "all-MiniLM-L6-v2 (22.7M params, pretrained on 1B pairs), frozen",
    }[name]


def _clf_row(name: str, model: torch.nn.Module, res: FitResult, test: dict[str, Any], cfg: Config) -> dict[str, Any]:
    best = res.history[res.best_epoch - 1] if res.best_epoch else {}
    return {
        "classifier": name,
        "encoder": _encoder_description(name, cfg),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs": len(res.history),
        "best_epoch": res.best_epoch,
        "val_acc": best.get("val_acc", float("nan")),
        "test_acc": test["acc"],
        "s/epoch": res.seconds_per_epoch,
    }


def train_sentiment(
    j: int, name: str, dae: TextDAE, d: TextData, lab: Labelled, cfg: Config, ctx: Context
) -> tuple[dict[str, Any], FitResult]:
    """One sentiment classifier (stage `clf-<name>`, group `clf`): the DAE's encoder frozen or fine-tuned
    (encoder lr = clf.lr x finetune_lr_scale), or a fresh encoder; test accuracy of the best epoch."""
    tcfg, dev = ctx.train_config(group="clf"), ctx.device
    torch.manual_seed(cfg.seed + 10 + j)
    encoder = (
        copy.deepcopy(dae.encoder)
        if name.startswith("dae")
        else SentenceEncoder(len(d.vocab), cfg.emb, cfg.dim, d.vocab.pad_id)
    )
    model = SentimentClassifier(encoder, len(d.data.classes)).to(dev)
    scale = cfg.finetune_lr_scale if name == "dae-finetune" else 1.0
    params = sentiment_params(model, "frozen" if name == "dae-frozen" else "train", tcfg.lr, tcfg.lr * scale)
    step = clf_step(tcfg.label_smoothing)
    res = fit(
        model,
        lab.batches("train", tcfg, cfg.seed),
        lab.batches("val", tcfg, cfg.seed),
        tcfg,
        device=dev,
        stage=f"clf-{name}",
        run=ctx.run,
        resume=ctx.resume,
        params=params,
        step=step,
        verbose=ctx.verbose,
    )
    test = evaluate(model, lab.batches("test", tcfg, cfg.seed), step, device=dev)
    return _clf_row(name, model, res, test, cfg), res


def train_minilm_head(
    j: int, d: TextData, lab: Labelled, cfg: Config, ctx: Context
) -> tuple[dict[str, Any], FitResult]:
    """The outside reference: the same MLP head on frozen MiniLM sentence embeddings (stage
    `clf-minilm-frozen`, group `clf`)."""
    tcfg, dev = ctx.train_config(group="clf"), ctx.device
    sizes = [len(lab.texts[s]) for s in ("train", "val", "test")]
    feats = minilm_embeddings(lab.texts["train"] + lab.texts["val"] + lab.texts["test"]).split(sizes)
    x = dict(zip(("train", "val", "test"), feats, strict=True))
    y = {s: torch.tensor(lab.labels[s]) for s in x}

    def batches(s: str) -> FeatureBatches:
        return FeatureBatches(
            x[s], y[s], tcfg.batch_size if s == "train" else tcfg.eval_batch_size, shuffle=s == "train", seed=cfg.seed
        )

    torch.manual_seed(cfg.seed + 10 + j)
    head = mlp_head(x["train"].shape[1], cfg.dim, len(d.data.classes)).to(dev)
    step = feature_step(tcfg.label_smoothing)
    res = fit(
        head,
        batches("train"),
        batches("val"),
        tcfg,
        device=dev,
        stage="clf-minilm-frozen",
        run=ctx.run,
        resume=ctx.resume,
        step=step,
        verbose=ctx.verbose,
    )
    test = evaluate(head, batches("test"), step, device=dev)
    return _clf_row("minilm-frozen", head, res, test, cfg), res


def sentiment_transfer(
    dae: TextDAE, d: TextData, dae_eval: dict[str, float], cfg: Config, ctx: Context
) -> dict[str, Any]:
    """Every classifier in `classifiers`, then the report section; the summary's sentiment numbers."""
    lab = sentiment_data(d, cfg)
    rows, hists = [], {}
    for j, name in enumerate(cfg.classifiers):
        ctx.log(f"== sentiment: {name}")
        if name == "minilm-frozen":
            row, res = train_minilm_head(j, d, lab, cfg, ctx)
        else:
            row, res = train_sentiment(j, name, dae, d, lab, cfg, ctx)
        rows.append(row)
        hists[name] = res.history
    learned = report_sentiment(rows, hists, lab, d, dae_eval, cfg, ctx)
    accs = {r["classifier"]: r["test_acc"] for r in rows}
    transferred = [accs[n] for n in TRANSFERRED if n in accs]
    gain = (max(transferred) if transferred else float("nan")) - accs.get("scratch", float("nan"))
    return {
        "majority_acc": stats.majority_rate(lab.labels["test"]),
        "classifiers": {
            r["classifier"]: {"test_acc": r["test_acc"], "val_acc": r["val_acc"], **stats.learned_entry(*learned[n])}
            for r in rows
            for n in [r["classifier"]]
        },
        "sentiment": accs,
        "sentiment_val": {r["classifier"]: r["val_acc"] for r in rows},
        "transfer_gain": gain,
    }


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    d = prepare_data(cfg, ctx)
    report_design(d, cfg, ctx)
    show_corruptions(d, cfg, ctx)
    of = overfit_small_batch(d, cfg, ctx)
    dae, res, tcfg = train_dae(d, cfg, ctx)
    dae_eval = heldout_evaluation(dae, res, tcfg, d, cfg, ctx)
    transfer = sentiment_transfer(dae, d, dae_eval, cfg, ctx)
    return {
        "dataset": d.data.name,
        "vocab": len(d.vocab),
        "overfit_final_acc": of[-1]["train_token_acc"],
        "overfit_final_loss": of[-1]["train_loss"],
        "heldout_token_acc": dae_eval["held"],
        "dae_beats_copy": dae_eval["beats_copy"],
        "heldout_clean_token_acc": dae_eval["clean"],
        "copy_baseline_acc": dae_eval["copy"],
        "dae_best_epoch": res.best_epoch,
        "dae_s_per_epoch": res.seconds_per_epoch,
        **transfer,
    }
