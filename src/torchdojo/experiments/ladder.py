"""The classification ladder (MISSION C1-C4): the data shown, augmentations shown, then each rung
(logistic regression, MLP, CNN, ...) trained on the same split, augmentation and seed, with curves,
a per-rung table and confusion matrices. Preset `cifar10` is C4's ablation.
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from torchdojo import stats
from torchdojo.checkpoints import describe
from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.data import ImageData, Splits, random_subset, stratified_split, subset_classes
from torchdojo.data.augment import AUGMENTATIONS, Aug, build_augment, compose
from torchdojo.data.loader import TensorBatches
from torchdojo.data.standin import random_window, read_image_folder, resized
from torchdojo.engine import evaluate, fit
from torchdojo.errors import DataMissingError
from torchdojo.experiments.base import Context
from torchdojo.interpret import confusion
from torchdojo.models import build_model
from torchdojo.report import figures
from torchdojo.seeds import SeedSpec

MISSION_IDS = ("C1", "C2", "C3", "C4")
COMPARE = SeedSpec(regimes="rungs", pairs="chain")  # --seeds N: each rung against the one before it
SUMMARY = "classification ladder: logistic regression -> MLP -> CNN (C4 ablation on CIFAR-10)"


def title(cfg: "Config") -> str:
    """The report's title: the dataset and the rungs this run trained (SUMMARY describes every preset)."""
    return f"classification ladder on {cfg.dataset}: {' -> '.join(cfg.rungs)}"


@dataclasses.dataclass(frozen=True)
class Rung:
    model: str
    options: dict[str, Any]
    train: dict[str, Any]  # this rung's defaults on top of the shared TrainConfig (the user's --set wins)
    augment: bool = True
    why: str = ""


RUNGS: dict[str, Rung] = {
    "logreg": Rung(
        "logreg",
        {},
        {"lr": 2e-3, "schedule": "cosine"},
        augment=False,
        why="softmax regression on raw pixels; augmentation only hurts a linear model, so none",
    ),
    "mlp": Rung(
        "mlp",
        {"hidden": (512, 256, 128), "dropout": 0.2},
        {"lr": 2e-3, "schedule": "cosine"},
        augment=False,
        why="3 hidden layers with BN and dropout; flips/crops gave no gain to an MLP",
    ),
    "cnn": Rung(
        "cnn",
        {"channels": (32, 64), "fc": (256, 128), "dropout": 0.3},
        {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-4, "schedule": "onecycle"},
        why="2 conv+BN+pool blocks, 2 FC with dropout; one-cycle AdamW converges in few epochs",
    ),
    "small-resnet": Rung(
        "small-resnet",
        {},
        {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-4, "schedule": "onecycle"},
        why="D3's three downsampling residual blocks",
    ),
    "textbook-cnn": Rung("textbook-cnn", {}, {"lr": 1e-3}, why="the benchmark's CNN with its Adam settings"),
    # C4: the given BaselineModel (SGD), then the improved net, + BN, + dropout.
    "baseline": Rung(
        "baseline",
        {},
        {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9},
        why="C4's BaselineModel exactly as given, plain SGD with momentum",
    ),
    "improved": Rung(
        "improved-cnn",
        {},
        {"optimizer": "sgd", "lr": 0.02, "schedule": "cosine"},
        why="4 conv + 3 FC, no BN, no dropout",
    ),
    "improved-bn": Rung(
        "improved-cnn", {"batch_norm": True}, {"optimizer": "sgd", "lr": 0.05, "schedule": "cosine"}, why="+ batch norm"
    ),
    "improved-bn-dropout": Rung(
        "improved-cnn",
        {"batch_norm": True, "dropout": 0.3},
        {"optimizer": "sgd", "lr": 0.05, "schedule": "cosine"},
        why="+ dropout 0.3 on FCs",
    ),
}


@dataclasses.dataclass
class Config:
    dataset: str = "fashion-mnist"
    classes: tuple[str, ...] = ()  # keep only these classes (names); empty = all
    rungs: tuple[str, ...] = ("logreg", "mlp", "cnn")
    seed: int = 0
    val_fraction: float = 0.1  # stratified, seeded, taken from the training set
    train_subset: int = 0  # use this many training images (0 = all)
    augment: tuple[str, ...] = ("crop", "flip")  # train-time, batched; see `torchdojo list`
    crop_padding: int = 2
    test_crop: int = 0  # center crop at test time (0 = none)
    train_crop: int = 0  # random window of this side at training time, no padding (0 = none)
    augment_all: bool = False  # augment every rung, also those whose own default is none (seed 002 asks for it)
    channels: int = 0  # network input channels: 3 replicates grayscale images (0 = as stored)
    standin: str = ""  # dataset used when `dataset` is not found offline (the report says so)
    image_folder: str = ""  # an ImageFolder copy (root/train/<class>/..., root/test/<class>/...): used when given
    folder_size: int = 96  # image_folder's images are resized to this side (STL-10's own)
    standin_size: int = 0  # the stand-in's images resized to this side before cropping (0 = as stored)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        from torchdojo.errors import DojoError

        for r in self.rungs:
            if r not in RUNGS:
                raise DojoError(f"unknown rung {r!r}", f"rungs: {', '.join(RUNGS)}")
        if not self.rungs:
            raise DojoError("rungs is empty", f"pick one or more of {', '.join(RUNGS)}")
        if self.train_crop and self.test_crop and self.train_crop != self.test_crop:
            raise DojoError(
                f"train_crop={self.train_crop} and test_crop={self.test_crop} differ: the network would see "
                "another input size at test time",
                "set them equal (e.g. --set train_crop=64 --set test_crop=64)",
            )
        if self.channels not in (0, 1, 3):
            raise DojoError(f"channels must be 0 (as stored), 1 or 3, got {self.channels}", "e.g. --set channels=3")


SCALES = {
    "smoke": {"train_subset": 512, "train": {"epochs": 1, "batch_size": 64, "max_batches": 4}},
    "small": {"train": {"epochs": 8, "batch_size": 128}},
    "full": {"train": {"epochs": 30, "batch_size": 128}},
}
PRESETS = {
    "cifar10": {
        "all": {
            "dataset": "cifar10",
            "rungs": "baseline,improved,improved-bn,improved-bn-dropout",
            "augment": "crop,flip",
            "crop_padding": 4,
        }
    },
    # Seed 002's rungs 1-3: 3x64x64 inputs, train random 64 px crop + flip, test center 64 px crop, on STL-10's
    # ten classes (96 px) when present, else Fashion-MNIST resized to 72 px and replicated to 3 channels.
    "seed002": {
        "all": {
            "dataset": "stl10",
            "standin": "fashion-mnist",
            "standin_size": 72,
            "channels": 3,
            "rungs": "logreg,mlp,cnn",
            "augment": "flip",
            "augment_all": True,
            "train_crop": 64,
            "test_crop": 64,
        }
    },
}


def show_data(data: Splits, ctx: Context, cfg: Config) -> None:
    """C1: a 10x4 grid (4 examples per class, one row per class) and one random image per class.
    C2: one image under each augmentation."""
    g = torch.Generator().manual_seed(cfg.seed)
    classes, y = data.classes, data.train.y
    grid, randoms = [], []
    for c in range(len(classes)):
        members = torch.nonzero(y == c).flatten()
        pick = members[torch.randperm(len(members), generator=g)[:5]]
        grid += [data.train.x[i] for i in pick[:4]]
        randoms.append(data.train.x[pick[4]] if len(pick) > 4 else data.train.x[pick[0]])
    figures.image_grid(
        grid, ctx.run.figure_path("c1_grid"), ncols=4, row_labels=classes, title="4 training examples per class"
    )
    figures.image_grid(
        randoms,
        ctx.run.figure_path("c1_random"),
        ncols=min(10, len(classes)),
        titles=classes,
        title="one random image per class",
    )
    ctx.report.heading("C1. The data")
    ctx.report.text(
        f"{data.name}: {len(data.train):,} training and {len(data.test):,} test images of shape "
        f"{'x'.join(map(str, data.train.shape))}, {len(classes)} classes, read from {data.source}."
    )
    ctx.report.figure("c1_grid.png", "10x4 grid: each row one class, labelled with its name")
    ctx.report.figure("c1_random.png", "one random image per class, with its label")

    img = data.train.x[:1]
    views, titles = [img[0]], ["original"]
    for name in AUGMENTATIONS.names():
        op = AUGMENTATIONS.get(name)
        fn = op(cfg.crop_padding) if name == "crop" else (op(1.0) if name in ("flip", "erase") else op())
        views.append(fn(img, torch.Generator().manual_seed(cfg.seed + 1))[0])
        titles.append(name + (" (used)" if name in cfg.augment else ""))
    figures.image_grid(views, ctx.run.figure_path("c2_augment"), ncols=len(views), titles=titles, cell=1.8)
    ctx.report.heading("C2. Augmentation")
    ctx.report.text(
        f"Training uses {', '.join(cfg.augment) or 'no augmentation'}, applied to whole batches on the training "
        "device with independent random parameters per image (no DataLoader workers). crop: zero-pad by "
        f"{cfg.crop_padding} px and cut a random window of the original size; flip: mirror left-right with p=0.5; "
        "erase: zero a random rectangle; jitter: random brightness and contrast. "
        + (
            f"Every rung also takes a random {cfg.train_crop}x{cfg.train_crop} window of each training image "
            "(no padding) before those. "
            if cfg.train_crop
            else ""
        )
        + (
            f"The {'augmentations apply to every rung' if cfg.augment_all else 'rungs that augment say so below'}. "
            "Test images get "
        )
        + (
            f"a {cfg.test_crop or cfg.train_crop} px center crop."
            if cfg.test_crop or cfg.train_crop
            else "no augmentation (center view)."
        )
        + (f" Images reach the networks with {cfg.channels} channel(s)." if cfg.channels else "")
    )
    ctx.report.figure("c2_augment.png", "the same training image under each augmentation")


def _split(data: Splits, cfg: Config, dev: torch.device) -> tuple[ImageData, ImageData, ImageData]:
    """Train / validation (stratified, seeded) / test, optionally a seeded subset of the training part."""
    tr_idx, va_idx = stratified_split(data.train.y, cfg.val_fraction, cfg.seed)
    tr_idx = random_subset(tr_idx, cfg.train_subset, cfg.seed)
    parts = (data.train.take(tr_idx), data.train.take(va_idx), data.test)
    side = cfg.standin_size  # read on every run, as the config contract asks of every field
    side = side if data.name == cfg.standin else 0
    return tuple(resized(d, side).to(dev) for d in parts)  # type: ignore[return-value]


def load(cfg: Config, ctx: Context) -> tuple[Splits, str]:
    """`cfg.image_folder` when given; else `cfg.dataset`, or `cfg.standin` when that is set and the dataset is not
    found offline (a --download run that fails still fails). The second value says when the stand-in ran, for the
    report ("" otherwise)."""
    classes = list(cfg.classes) or None
    folder, side = cfg.image_folder, cfg.folder_size
    if folder:
        data = read_image_folder(Path(folder), side)
        return (subset_classes(data, classes) if classes else data), ""
    if not cfg.standin or cfg.standin == cfg.dataset:
        return ctx.load_data(cfg.dataset, classes), ""
    try:
        return ctx.load_data(cfg.dataset, classes), ""
    except DataMissingError as e:
        if ctx.download:
            raise
        missing = e.problem
    data = ctx.load_data(cfg.standin, classes)
    c, h, w = data.train.shape
    how = [f"resized from {h}x{w} to {cfg.standin_size}x{cfg.standin_size} px (bilinear)"] if cfg.standin_size else []
    if cfg.channels and cfg.channels != c:
        how.append(f"its {c} channel{'s' if c > 1 else ''} replicated to {cfg.channels}")
    note = (
        f"{cfg.dataset} was not found offline ({missing}), so this run used a stand-in: {data.name}"
        + (f", {' and '.join(how)}" if how else "")
        + f". Its numbers are {data.name}'s, not {cfg.dataset}'s; to run on {cfg.dataset}, put its files where "
        f"the message above says, add --download, or give an ImageFolder copy with --set image_folder=PATH."
    )
    return data, note


def train_augment(cfg: Config, rung: Rung) -> Aug | None:
    """The training augmentation of one rung: the random `train_crop` window (input geometry, every rung), then
    `augment` for the rungs that augment (all of them with `augment_all`)."""
    ops = [random_window(cfg.train_crop)] if cfg.train_crop else []
    named = build_augment(cfg.augment, cfg.crop_padding) if rung.augment or cfg.augment_all else None
    return compose(ops + ([named] if named is not None else []))


def input_shape(cfg: Config, stored: tuple[int, int, int]) -> tuple[int, int, int]:
    """What the network sees: `channels` (or the stored ones) x the central/random window (or the stored side)."""
    c, h, w = stored
    view = cfg.test_crop or cfg.train_crop
    side_h, side_w = (min(view, h), min(view, w)) if view else (h, w)
    return (cfg.channels or c, side_h, side_w)


def train_rung(
    i: int, name: str, data: Splits, splits: tuple[ImageData, ImageData, ImageData], cfg: Config, ctx: Context
) -> dict[str, Any]:
    """C3/C4: one rung trained on the shared split (its own defaults under the user's settings), its best
    epoch evaluated on every split, its curves, confusion matrix and tables in the report."""
    rung, dev, mean_std = RUNGS[name], ctx.device, data.mean_std()
    tcfg = ctx.train_config(rung.train)
    augment = train_augment(cfg, rung)

    def batches(d: ImageData, train: bool) -> TensorBatches:
        return TensorBatches(
            d,
            tcfg.batch_size if train else tcfg.eval_batch_size,
            *mean_std,
            shuffle=train,
            seed=cfg.seed,
            augment=augment if train else None,
            crop=cfg.test_crop or cfg.train_crop or None,
            channels=cfg.channels or None,
        )

    torch.manual_seed(cfg.seed + i)
    train, val, test = splits
    shape = input_shape(cfg, train.shape)
    model = build_model(rung.model, shape, len(data.classes), **rung.options).to(dev)
    describe(model, classes=data.classes, mean=mean_std[0], std=mean_std[1], crop=cfg.test_crop or None)
    ctx.log(f"== rung {i + 1}/{len(cfg.rungs)}: {name} ({model.num_params():,} params)")
    result = fit(
        model,
        batches(train, True),
        batches(val, False),
        tcfg,
        device=dev,
        stage=name,
        run=ctx.run,
        resume=ctx.resume,
        verbose=ctx.verbose,
    )
    t0 = time.perf_counter()
    ev = {
        split: evaluate(
            model,
            batches(d, False),
            device=dev,
            max_batches=tcfg.max_batches,
            return_outputs=split == "test",
            channels_last=tcfg.channels_last,
            progress=f"[{name}] best epoch on {split}" if ctx.verbose else "",
        )
        for split, d in (("train", train), ("val", val), ("test", test))
    }
    ctx.run.log_test(name, {"acc": ev["test"]["acc"], "loss": ev["test"]["loss"]})
    cm = confusion(ev["test"]["probs"], ev["test"]["targets"], len(data.classes))
    figures.confusion_matrix(
        cm,
        data.classes,
        ctx.run.figure_path(f"cm_{name}"),
        title=f"{name}: test confusion (best epoch {result.best_epoch})",
    )
    figures.curves({name: result.history}, ctx.run.figure_path(f"curves_{name}"), title=name)
    row = {
        "rung": name,
        "model": rung.model,
        "input": "x".join(map(str, shape)),
        **{f"{s}_acc": ev[s]["acc"] for s in ev},
        **{f"{s}_loss": ev[s]["loss"] for s in ev},
        "params": model.num_params(),
        "trainable": model.num_params(trainable_only=True),
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "s_per_epoch": result.seconds_per_epoch,
        "eval_s": time.perf_counter() - t0,
    }
    row["learned"], row["learned_reason"] = stats.learned_eval(ev["test"], result.history)
    _report_rung(i, name, row, ev, tcfg, cfg, ctx)
    return {"row": row, "history": result.history}


def _report_rung(
    i: int, name: str, row: dict[str, Any], ev: dict[str, dict[str, Any]], tcfg: TrainConfig, cfg: Config, ctx: Context
) -> None:
    """The rung's section: accuracy per split, the hyper-parameters it trained with, curves and confusion."""
    rung = RUNGS[name]
    ctx.report.heading(f"Rung {i + 1}: {name}", level=3)
    ctx.report.text(
        f"{rung.why}."
        + (
            " Augmented here all the same: augment_all asks for augmentation on every rung."
            if cfg.augment_all and not rung.augment
            else ""
        )
    )
    if not row["learned"]:
        ctx.report.warning(f"{name} did not learn: {row['learned_reason']}")
    hp = {
        **hyper_parameters(tcfg),
        "augment": ",".join(cfg.augment) if rung.augment or cfg.augment_all else "none",
        "input": row["input"],
        **{k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in rung.options.items()},
    }
    ctx.report.table(
        [{"split": s, "accuracy": ev[s]["acc"], "loss": ev[s]["loss"], "images": ev[s]["n"]} for s in ev],
        caption=f"{name}: best model (epoch {row['best_epoch']})",
    )
    ctx.report.table(
        [{"setting": k, "value": v} for k, v in hp.items()]
        + [
            {"setting": "parameters (total / trainable)", "value": f"{row['params']:,} / {row['trainable']:,}"},
            {"setting": "seconds per epoch", "value": f"{row['s_per_epoch']:.1f}"},
        ],
        caption=f"{name}: hyper-parameters it trained with, and cost",
    )
    ctx.report.figure(f"curves_{name}.png", f"{name}: train (solid) and val (dashed) loss and accuracy per epoch")
    ctx.report.figure(f"cm_{name}.png", f"{name}: confusion matrix of the best model on the test set")
    ctx.report.save(ctx.run.path)  # a readable report after every rung, even if a later one is interrupted


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    data, standin = load(cfg, ctx)
    splits = _split(data, cfg, ctx.device)
    if standin:
        ctx.report.warning(standin)
    show_data(data, ctx, cfg)
    train, val, test = splits
    ctx.report.heading("C3/C4. The ladder")
    ctx.report.text(
        f"Every rung trains on the same {len(train):,}-image split (validation: {len(val):,} images, "
        f"stratified, seed {cfg.seed}), keeps the weights of its best validation epoch, and is then "
        f"evaluated on the {len(test):,} test images."
        + (
            f" At this scale train.max_batches={cfg.train.max_batches} caps every pass, evaluation included: the "
            "tables' `images` column says how many images each number is over."
            if cfg.train.max_batches
            else ""
        )
    )
    done = {name: train_rung(i, name, data, splits, cfg, ctx) for i, name in enumerate(cfg.rungs)}
    rows = [d["row"] for d in done.values()]
    figures.curves({n: d["history"] for n, d in done.items()}, ctx.run.figure_path("curves_all"), title="all rungs")
    ctx.report.heading("All rungs side by side")
    ctx.report.table(
        rows,
        caption="accuracy and loss of each rung's best model",
        columns=[
            "rung",
            "train_acc",
            "val_acc",
            "test_acc",
            "train_loss",
            "val_loss",
            "test_loss",
            "params",
            "trainable",
            "best_epoch",
            "s_per_epoch",
            "learned",
        ],
    )
    ctx.report.figure("curves_all.png", "all rungs: train (solid) and validation (dashed) curves")
    report_steps(rows, ctx)
    summary = {r["rung"]: {k: v for k, v in r.items() if isinstance(v, (int, float))} for r in rows}
    for r in rows:
        summary[r["rung"]].update(stats.learned_entry(r["learned"], r["learned_reason"]))
    return {"dataset": data.name, "rungs": summary}


def report_steps(rows: list[dict[str, Any]], ctx: Context) -> None:
    """C4: each rung's effect against the one before it (baseline -> improved -> + BN -> + dropout under the
    cifar10 preset), from this run's test accuracies, naming the steps that hurt."""
    if len(rows) < 2:
        return
    values = {r["rung"]: [r["test_acc"]] for r in rows}
    learned = {r["rung"]: True if r["learned"] else r["learned_reason"] for r in rows}
    ctx.report.heading("C4. Each step's effect" if "baseline" in values else "Each step's effect", level=3)
    ctx.report.text(seeds_text(stats.compare(values, learned=learned, pairs="chain"), values))


def seeds_text(comparisons: list[stats.Comparison], values: dict[str, list[float]]) -> str:
    """Each step (a rung against the one before it) and its effect on test accuracy, then the steps that hurt:
    lower beyond the 95% interval over seeds, lower within it, or, from one seed, lower on that seed (which one
    seed cannot tell from noise). Used for one run and, as the module's `seeds_text`, for `--seeds N`."""
    lines = [f"- Step to {c.a} ({RUNGS[c.a].why if c.a in RUNGS else c.a}): {c.text}" for c in comparisons]

    def gap(c: stats.Comparison) -> float:
        return sum(values[c.a]) / len(values[c.a]) - sum(values[c.b]) / len(values[c.b])

    def named(cs: list[stats.Comparison]) -> str:
        return ", ".join(f"{c.b} -> {c.a} ({stats.fmt_diff(gap(c), '%')})" for c in cs)

    hurt = [c for c in comparisons if c.verdict == "worse"]
    lower = [c for c in comparisons if c.verdict in ("tie", "one-seed") and gap(c) < 0]
    failed = [c for c in comparisons if c.verdict == "did-not-learn"]
    one_seed = any(c.verdict == "one-seed" for c in comparisons)
    if hurt:
        lines.append(f"Steps that hurt (lower beyond the 95% interval): {named(hurt)}.")
    if lower and one_seed:
        lines.append(
            f"Steps that hurt on this seed: {named(lower)}; one seed cannot tell whether that is beyond noise "
            "(run with --seeds 5)."
        )
    elif lower:
        lines.append(f"Lower, but within the seeds' noise: {named(lower)}.")
    if not hurt and not lower and len(failed) < len(comparisons):
        lines.append("No compared step lowered test accuracy" + (" on this seed." if one_seed else "."))
    if failed:
        lines.append(f"Not compared, a rung did not learn: {', '.join(f'{c.b} -> {c.a}' for c in failed)}.")
    return "\n".join(lines)
