"""Metric learning (MISSION E1-E4): cross-entropy (E1), triplet loss then a frozen-extractor FC head (E2),
and triplet + cross-entropy at once (E4), on the same backbone, initial weights, data and seed; E3 sets them
side by side on feature-map quality (Fisher ratio and linear-probe accuracy per layer), test accuracy and
convergence speed (epochs and seconds to a target validation accuracy).

Offline default: Fashion-MNIST T-shirt/top vs Shirt. Why: Shirt is Fashion-MNIST's hardest class and
T-shirt/top its most frequent confusion (a raw-pixel logistic regression fitted on 10k training images
mixes these two up 262 times on the 10k test images, more than any other pair; Pullover/Coat is next
with 256). Both are upper-body garments of one outline that differ in collars, buttons and sleeves, so
the pair needs fine features. Preset `cifar10` is the seed's airplane vs automobile.

    torchdojo run metric-learning                               # small scale, offline
    torchdojo run metric-learning --preset cifar10 --download   # the seed's data
    torchdojo run metric-learning --set miner=batch-hard --set ce_weight=0.5 --set regimes=e2,e4
"""

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F

from torchdojo import stats
from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.data import ImageData, Splits, random_subset, stratified_split
from torchdojo.data.augment import build_augment
from torchdojo.engine import evaluate
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context
from torchdojo.metric import featuremaps, projection
from torchdojo.metric.collapse import CollapseDetector
from torchdojo.metric.compare import report_comparison
from torchdojo.metric.miners import build_miner
from torchdojo.metric.model import MetricCNN, main_layers
from torchdojo.metric.monitor import Probe, RepresentationMonitor
from torchdojo.metric.probes import (
    embed,
    fisher_ratio,
    knn_accuracy,
    linear_probe_accuracy,
    mean_pairwise_distance,
)
from torchdojo.metric.regimes import RegimeResult, Setup, classifier_epochs_to, train_e1, train_e2, train_e4
from torchdojo.models import build_model
from torchdojo.report import figures
from torchdojo.seeds import SeedSpec

MISSION_IDS = ("E1", "E2", "E3", "E4")
COMPARE = SeedSpec(regimes="regimes", pairs="all")  # --seeds N: E1, E2 and E4 each against each
SUMMARY = "metric learning: cross-entropy vs triplet loss (+ frozen FC) vs both, feature maps and embeddings"
# TrainConfig settings no stage reads (setting one is refused):
UNUSED = {
    "train.label_smoothing": "E2's triplet stage has no cross-entropy to smooth, so no setting could apply to every "
    "regime alike; E3 compares the losses as E1/E2/E4 define them (plain cross-entropy)",
    "head.label_smoothing": "E2's head stage is compared with E1's plain cross-entropy; smoothing only it would "
    "change what E3 compares",
}
REGIMES = {
    "e1": "E1: cross-entropy, end to end",
    "e2": "E2: triplet loss on the extractor (no FC), then the FC head alone with cross-entropy (extractor frozen)",
    "e4": "E4: L = L_triplet + lambda * L_CE, whole model at once",
}


@dataclasses.dataclass
class Config:
    dataset: str = "fashion-mnist"
    classes: tuple[str, ...] = ("T-shirt/top", "Shirt")  # two classes; see the module docstring for why
    regimes: tuple[str, ...] = ("e1", "e2", "e4")
    seed: int = 0
    val_fraction: float = 0.1  # stratified, seeded, from the training set
    train_subset: int = 0  # this many training images (0 = all)
    test_subset: int = 0  # this many test images (0 = all)
    val_subset: int = 0  # this many validation images (0 = all)
    model: str = "metric-cnn"  # or any registered classifier (torchdojo list models)
    backbone: str = ""  # a zoo backbone (e.g. resnet18, efficientnet_lite0) instead of `model`; "" = none
    pretrained: bool = True  # backbone only: ImageNet weights (offline first), else random init
    image_size: int = 0  # resize inputs to this; 0 = native (a backbone: its own input size)
    channels: tuple[int, ...] = (32, 64, 128)  # metric-cnn only
    embedding_dim: int = 64  # metric-cnn only
    margin: float = 0.2  # triplet margin on L2-normalised embeddings (distances in [0, 2])
    miner: Literal["none", "batch-hard", "semi-hard"] = "semi-hard"  # none: the TripletDataset's triplets as drawn
    miner_impl: Literal["torchdojo", "pml"] = "torchdojo"  # pml: pytorch-metric-learning
    ce_weight: float = 1.0  # lambda of E4 (the seed: 1)
    augment: tuple[str, ...] = ("flip",)
    crop_padding: int = 2
    target_acc: float = 0.85  # validation accuracy that counts as "converged"
    feature_map_epochs: tuple[int, ...] = ()  # () = first, middle and last (epoch 0 = init is always shown)
    feature_map_channels: int = 8
    feature_map_inputs: int = 1  # fixed training images per class
    probe_images: int = 2000  # training images used as kNN reference and to fit linear probes
    knn_k: int = 5
    projection_points: int = 1000  # test embeddings drawn in the PCA / t-SNE plots
    tsne: bool = True
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(epochs=6, optimizer="adamw", lr=2e-3, weight_decay=5e-4, schedule="cosine")
    )
    # E2 stage 2: the FC head alone on the frozen extractor (--set head.lr=..., head.epochs=...)
    head: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(epochs=3, optimizer="adamw", lr=1e-2, weight_decay=0.0, schedule="cosine")
    )

    def __post_init__(self) -> None:
        for r in self.regimes:
            if r not in REGIMES:
                raise DojoError(f"unknown regime {r!r}", f"regimes: {', '.join(REGIMES)}")
        if not self.regimes:
            raise DojoError("regimes is empty", f"pick one or more of {', '.join(REGIMES)}")
        if self.margin <= 0 or self.margin > 2:
            raise DojoError(f"margin must be in (0, 2] (unit embeddings), got {self.margin}")
        if len(self.classes) == 1:
            raise DojoError("metric learning needs at least two classes", "set classes=a,b (or empty for all)")
        if self.ce_weight < 0:
            raise DojoError(f"ce_weight must be >= 0, got {self.ce_weight}")
        if not 0 < self.target_acc <= 1:
            raise DojoError(f"target_acc must be in (0, 1], got {self.target_acc}")


SCALES = {
    "smoke": {
        "train_subset": 240,
        "test_subset": 200,
        "val_subset": 120,
        "probe_images": 120,
        "feature_map_channels": 4,
        "projection_points": 100,
        "channels": "8,16",
        "embedding_dim": 16,
        "tsne": False,
        "train": {"epochs": 2, "batch_size": 48, "max_batches": 3},
        "head": {"epochs": 1, "batch_size": 48, "max_batches": 3},
    },
    # minutes on a shared 2-core CPU: a narrower net, 6,000 of the 10,800 training images
    "small": {
        "train_subset": 6000,
        "channels": "16,32,64",
        "embedding_dim": 32,
        "probe_images": 1500,
        "train": {"epochs": 5},
    },
    "full": {"train": {"epochs": 30}, "head": {"epochs": 10}},
}
PRESETS = {
    "cifar10": {
        "all": {
            "dataset": "cifar10",
            "classes": "airplane,automobile",
            "augment": "crop,flip",
            "crop_padding": 4,
        }
    },
}


def _build_model(cfg: Config, in_shape: tuple[int, int, int], k: int, download: bool) -> torch.nn.Module:
    if cfg.backbone:  # the transfer issue's zoo; the whole network trains in every regime
        from torchdojo.backbones import build_classifier

        regime = "finetune" if cfg.pretrained else "scratch"
        return build_classifier(cfg.backbone, k, regime=regime, download=download)
    if cfg.model == "metric-cnn":
        return MetricCNN(in_shape, k, channels=cfg.channels, embedding_dim=cfg.embedding_dim)
    return build_model(cfg.model, in_shape, k)


@dataclasses.dataclass
class Prepared:
    """The data every regime shares: splits and setup, the kNN/probe reference set, fixed feature-map inputs."""

    data: Splits
    setup: Setup
    test: ImageData
    ref: ImageData
    in_shape: tuple[int, int, int]
    fm_raw: torch.Tensor  # uint8 images shown under the feature maps
    fm_names: list[str]
    fm_x: torch.Tensor  # the same images, normalised


def prepare(cfg: Config, ctx: Context) -> Prepared:
    """The two classes, a stratified seeded validation split, optional seeded subsets, the input preprocessing
    (a backbone's own size, mean/std and RGB) and the first `feature_map_inputs` training images per class."""
    data = ctx.load_data(cfg.dataset, list(cfg.classes) or None)
    dev, k = ctx.device, len(data.classes)
    mean, std = data.mean_std()
    size, channels = cfg.image_size or None, None
    if cfg.backbone:  # the backbone's own preprocessing: its input size, ImageNet mean/std, RGB
        from torchdojo.backbones import BACKBONES

        prep = BACKBONES.get(cfg.backbone).preprocessing
        mean, std, channels = prep.mean, prep.std, 3
        size = cfg.image_size or prep.input_size
    tr_idx, va_idx = stratified_split(data.train.y, cfg.val_fraction, cfg.seed)
    train = random_subset(data.train.take(tr_idx), cfg.train_subset, cfg.seed)
    val = random_subset(data.train.take(va_idx), cfg.val_subset, cfg.seed + 1)
    test = random_subset(data.test, cfg.test_subset, cfg.seed)
    if len(val) == 0:
        raise DojoError("the validation split is empty", "raise val_fraction or use more training images")
    ref = random_subset(train, cfg.probe_images, cfg.seed + 2)
    train, val, test, ref = train.to(dev), val.to(dev), test.to(dev), ref.to(dev)
    aug = build_augment(cfg.augment, cfg.crop_padding)
    setup = Setup(train, val, mean, std, dev, cfg.seed, aug, ctx.run, ctx.resume, ctx.verbose, size, channels)
    fm_idx = torch.cat([torch.nonzero(train.y == c).flatten()[: cfg.feature_map_inputs] for c in range(k)])
    fm_x = next(iter(setup.batches(train.take(fm_idx), len(fm_idx), False)))[0]
    in_shape = (channels or data.train.shape[0], size or data.train.shape[1], size or data.train.shape[2])
    return Prepared(
        data, setup, test, ref, in_shape, train.x[fm_idx].cpu(), [data.classes[int(c)] for c in train.y[fm_idx]], fm_x
    )


def stage_configs(cfg: Config, ctx: Context) -> dict[str, TrainConfig]:
    """Every stage's TrainConfig: the `train` group for E1, E2's triplet stage and E4; the `head` group for
    E2's head stage (both resolved with the user's settings)."""
    tcfg = ctx.train_config()
    head = ctx.train_config(group="head")
    return {"e1": tcfg, "e2-triplet": tcfg, "e2-head": head, "e4": tcfg}


def report_setup(p: Prepared, cfg: Config, tcfgs: dict[str, TrainConfig], ctx: Context) -> None:
    """The data, what every regime shares, and the hyper-parameters each stage trains with."""
    data, setup, bs = p.data, p.setup, tcfgs["e1"].batch_size
    init = "ImageNet weights" if cfg.pretrained and cfg.backbone else "random init"  # pretrained: backbones only
    ctx.report.heading("Setup")
    ctx.report.text(
        f"{data.name}: {len(setup.train):,} training, {len(setup.val):,} validation (stratified, seed {cfg.seed}) "
        f"and {len(p.test):,} test images of shape {'x'.join(map(str, data.train.shape))}, classes "
        f"{' vs '.join(data.classes)}. Every regime starts from the same initial weights of "
        f"`{cfg.backbone or cfg.model}` ({init}) and sees about {len(setup.train):,} images per epoch in steps of {bs} "
        f"(triplet regimes: {bs // 3} triplets per step, drawn by `TripletDataset`"
        + (f", then re-mined in the batch ({cfg.miner}, {cfg.miner_impl})" if cfg.miner != "none" else "")
        + f"). Triplet margin {cfg.margin} on L2-normalised embeddings; E4's lambda = {cfg.ce_weight}. "
        f"Augmentation: {', '.join(cfg.augment) or 'none'}. Target validation accuracy for convergence: "
        f"{cfg.target_acc}."
    )
    stages = [s for s in tcfgs if s.partition("-")[0] in cfg.regimes]
    ctx.report.table(
        [{"stage": s, **hyper_parameters(tcfgs[s])} for s in stages],
        caption="the hyper-parameters each stage trains with",
    )
    if cfg.dataset == "fashion-mnist" and set(cfg.classes) == {"T-shirt/top", "Shirt"}:
        ctx.report.text(
            "Why these two classes: in Fashion-MNIST confusion matrices Shirt is the hardest class "
            "and its most frequent confusion is T-shirt/top; both are upper-body garments with the "
            "same outline, so telling them apart needs fine features (collar, buttons, sleeve "
            "length), which is what the feature maps and the separability numbers should show."
        )


def train_regime(
    name: str, cfg: Config, ctx: Context, p: Prepared, tcfgs: dict[str, TrainConfig]
) -> tuple[RegimeResult, dict[str, Any]]:
    """E1/E2/E4: one regime from the shared initial weights, watched by a representation monitor (kNN,
    spread, Fisher ratio per layer, feature-map snapshots); returns it and its main layers."""
    torch.manual_seed(cfg.seed)  # the same initial weights for every regime
    setup, tcfg = p.setup, tcfgs["e1"]
    model = _build_model(cfg, p.in_shape, len(p.data.classes), ctx.download).to(setup.device)
    layers = main_layers(model)
    monitor = RepresentationMonitor(
        Probe(p.ref, setup.val, setup.mean, setup.std, setup.device, cfg.knn_k, setup.size, setup.channels),
        layers,
        p.fm_x.to(setup.device),
        cfg.feature_map_epochs or tuple(sorted({1, (tcfg.epochs + 1) // 2, tcfg.epochs})),
        CollapseDetector(cfg.margin),
        channels=cfg.feature_map_channels,
        state_path=ctx.run.checkpoint_dir(f"monitor-{name}") / "state.pt" if ctx.run.is_main else None,
    )
    if name == "e1":
        return train_e1(model, setup, tcfg, monitor), layers
    miner = build_miner(cfg.miner, cfg.margin, cfg.miner_impl)
    if name == "e2":
        return train_e2(model, setup, tcfgs["e2-triplet"], tcfgs["e2-head"], cfg.margin, miner, monitor), layers
    return train_e4(model, setup, tcfgs["e4"], cfg.margin, miner, cfg.ce_weight, monitor), layers


def measure_regime(
    res: RegimeResult, cfg: Config, p: Prepared, layers: dict[str, Any], eval_batch_size: int
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], torch.Tensor]:
    """E3's numbers for one regime: accuracy per split, kNN on the embedding, separability (Fisher ratio,
    linear probe) per layer, spread, and epochs/seconds to the target accuracy. Also the per-split
    evaluation and the test embeddings."""
    model, setup, test, ref = res.model, p.setup, p.test, p.ref
    ev = {
        s: evaluate(model, setup.batches(d, eval_batch_size, False), device=setup.device)
        for s, d in (("train", setup.train), ("val", setup.val), ("test", test))
    }
    prep = {"size": setup.size, "channels": setup.channels}
    e_ref = embed(model, ref, setup.mean, setup.std, device=setup.device, layers=layers, **prep)
    e_test = embed(model, test, setup.mean, setup.std, device=setup.device, layers=layers, **prep)
    ref_y, test_y = ref.y.cpu(), test.y.cpu()
    sep = {
        ln: {
            "fisher": fisher_ratio(e_test[ln], test_y),
            "probe": linear_probe_accuracy(e_ref[ln], ref_y, e_test[ln], test_y, cfg.seed),
        }
        for ln in [*layers, "embedding"]
    }
    ep, sec = classifier_epochs_to(res, cfg.target_acc)
    kep, ksec = res.monitor.epochs_to("knn_val_acc", cfg.target_acc)
    out = {
        "test_acc": ev["test"]["acc"],
        "test_loss": ev["test"]["loss"],
        "val_acc": ev["val"]["acc"],
        "train_acc": ev["train"]["acc"],
        "knn_test_acc": knn_accuracy(e_ref["embedding"], ref_y, e_test["embedding"], test_y, cfg.knn_k),
        "spread": mean_pairwise_distance(e_test["embedding"]),
        "separability": sep,
        "epochs_to_target": ep,
        "seconds_to_target": sec,
        "knn_epochs_to_target": kep,
        "knn_seconds_to_target": ksec,
        "train_seconds": res.train_seconds,
    }
    return out, ev, e_test["embedding"]


CURVE_NOTES = {
    "e2": "; the triplet stage's loss is the triplet loss and, having no head yet, its accuracy is a leave-one-out "
    "nearest-class-centroid vote on the embedding within each batch (its best epoch by that validation "
    "accuracy is kept); the head stage's loss is cross-entropy",
    "e4": "; train loss = triplet + lambda * CE, validation loss = CE",
}


def report_regime(
    res: RegimeResult,
    out: dict[str, Any],
    ev: dict[str, dict[str, Any]],
    layers: dict[str, Any],
    n_test: int,
    ctx: Context,
) -> None:
    """E1/E2/E4: the regime's curves, its best model per split, and its representation epoch by epoch."""
    name = res.name
    ctx.report.heading(REGIMES[name])
    figures.curves(res.stages, ctx.run.figure_path(f"curves_{name}"), title=REGIMES[name].split(":")[0])
    ctx.report.figure(
        f"curves_{name}.png",
        "loss and accuracy per epoch, train (solid) and validation (dashed)" + CURVE_NOTES.get(name, ""),
    )
    ctx.report.table(
        [{"split": s, "accuracy": ev[s]["acc"], "CE loss": ev[s]["loss"], "images": ev[s]["n"]} for s in ev]
        + [{"split": "test, kNN on the embedding", "accuracy": out["knn_test_acc"], "images": n_test}],
        caption=f"{name}: best model",
    )
    ctx.report.table(
        [
            {
                "epoch": r["epoch"],
                "kNN val acc": r["knn_val_acc"],
                "spread": r["spread"],
                **{f"Fisher {ln}": r[f"fisher:{ln}"] for ln in [*layers, "embedding"]},
                **({"train triplet loss": r["train_triplet"]} if "train_triplet" in r else {}),
                **({"mined triplets/batch": r["train_triplets"]} if "train_triplets" in r else {}),
            }
            for r in res.monitor.rows
        ],
        caption=f"{name}: the representation per epoch (validation set; epoch 0 = initial weights). "
        "spread = mean pairwise distance of the unit embeddings",
    )


def report_embeddings(name: str, emb: torch.Tensor, p: Prepared, cfg: Config, ctx: Context) -> None:
    """E3: 2-D projections (PCA, optionally t-SNE) of the regime's test embeddings, coloured by class."""
    pts = min(cfg.projection_points, len(p.test))
    xy, share = projection.pca_2d(emb[:pts])
    views = {f"PCA ({share:.0%} of variance)": xy}
    if cfg.tsne:
        ts = projection.tsne_2d(emb[:pts], cfg.seed)
        if ts is not None:
            views["t-SNE"] = ts
    projection.scatter(
        views,
        p.test.y.cpu()[:pts],
        p.data.classes,
        ctx.run.figure_path(f"embedding_{name}"),
        title=f"{name}: test embeddings",
    )
    ctx.report.figure(f"embedding_{name}.png", f"{name}: 2-D projections of {pts} test embeddings, by class")


def report_feature_maps(res: RegimeResult, layers: dict[str, Any], p: Prepared, ctx: Context) -> None:
    """E3: each main layer's feature maps of the fixed training images at the snapshot epochs."""
    name, snaps = res.name, res.monitor.snapshots
    for ln in layers:
        if not all(ln in s for s in snaps.values()):
            continue
        featuremaps.grid(
            snaps, p.fm_raw, p.fm_names, ln, ctx.run.figure_path(f"fmap_{name}_{ln}"), title=f"{name}: {ln}"
        )
        ctx.report.figure(
            f"fmap_{name}_{ln}.png",
            f"{name}: feature maps of {ln} for fixed training images at "
            f"epochs {', '.join(map(str, sorted(snaps)))} (each channel min-max normalised)",
        )


def report_collapse(res: RegimeResult, spread: float, ctx: Context) -> list[str]:
    """E2/E4: warnings when the embedding collapsed (during training, or on the test set); returns them."""
    detector = res.monitor.detector
    warnings = detector.warnings()
    if spread < detector.min_spread and not detector.collapsed_spread():
        warnings.append(f"test embeddings collapsed: mean pairwise distance {spread:.4f}")
    for w in warnings:
        ctx.report.warning(f"{res.name}: {w}")
    return warnings


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    p = prepare(cfg, ctx)
    tcfgs = stage_configs(cfg, ctx)
    report_setup(p, cfg, tcfgs, ctx)
    results: dict[str, RegimeResult] = {}
    evals: dict[str, dict[str, Any]] = {}
    layer_names: list[str] = []
    e4_at = None  # where E4's section starts: the E3 comparison goes before it (the course's order)
    for i, name in enumerate(cfg.regimes):
        ctx.log(f"== regime {i + 1}/{len(cfg.regimes)}: {REGIMES[name]}")
        e4_at = len(ctx.report.blocks) if name == "e4" else e4_at
        res, layers = train_regime(name, cfg, ctx, p, tcfgs)
        layer_names = list(layers)
        out, ev, emb = measure_regime(res, cfg, p, layers, tcfgs["e1"].eval_batch_size)
        report_regime(res, out, ev, layers, len(p.test), ctx)
        report_embeddings(name, emb, p, cfg, ctx)
        report_feature_maps(res, layers, p, ctx)
        out["collapse_warnings"] = report_collapse(res, out["spread"], ctx)
        out.update(stats.learned_entry(*regime_learned(res, out, p)))
        if not out["learned"]:
            ctx.report.warning(f"{name} did not learn: {out['learned_reason']}")
        results[name], evals[name] = res, out
        ctx.report.save(ctx.run.path)  # readable after every regime, even if a later one is interrupted
    pixels = _pixel_baseline(p.ref, p.test, cfg.seed)
    compared_at = len(ctx.report.blocks)
    report_comparison(ctx.report, ctx.run, results, evals, layer_names, pixels, cfg.target_acc, cfg.probe_images)
    if e4_at is not None:  # E1, E2, E3 (every regime side by side, E4's row included), then E4's own section
        b = ctx.report.blocks
        ctx.report.blocks = b[:e4_at] + b[compared_at:] + b[e4_at:compared_at]
    return {
        "dataset": cfg.dataset,
        "classes": list(cfg.classes),
        "target_acc": cfg.target_acc,
        "pixels": pixels,
        "regimes": evals,
    }


def regime_learned(res: RegimeResult, out: dict[str, Any], p: Prepared) -> tuple[bool, str]:
    """Whether a regime learned: its test accuracy against the test set's majority rate, and the training loss
    of its classifier stage (the last one: E2's head stage, whose loss is cross-entropy like E1's)."""
    last = list(res.stages.values())[-1] if res.stages else []
    return stats.learned(
        out["test_acc"],
        chance_or_majority=stats.majority_rate(p.test.y.tolist()),
        n_eval=len(p.test),
        loss_history=[r["train_loss"] for r in last if "train_loss" in r],
    )


def _pixel_baseline(ref: ImageData, test: ImageData, seed: int) -> dict[str, float]:
    """Separability of the raw input (8x8 average-pooled pixels): the floor every layer should beat."""

    def pix(d: ImageData) -> torch.Tensor:
        return F.adaptive_avg_pool2d(d.x.float().cpu() / 255, 8).flatten(1)

    return {
        "fisher": fisher_ratio(pix(test), test.y.cpu()),
        "probe": linear_probe_accuracy(pix(ref), ref.y.cpu(), pix(test), test.y.cpu(), seed),
    }
