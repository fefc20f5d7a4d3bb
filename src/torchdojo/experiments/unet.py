"""U-Net on few images (MISSION H2): a small U-Net segments items on cluttered canvases, trained on a few
images with and without its encoder-decoder skip connections and with and without random elastic deformation
(the 2x2 regimes), evaluated on held-out scenes by IoU and Dice; predictions and deformations drawn.
"""

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo import stats
from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.data import ImageData, random_subset
from torchdojo.data.segmentation import SegBatches, elastic, make_scenes, overlay, scene_stats
from torchdojo.engine import StepOutput, fit
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context
from torchdojo.models.unet import UNet
from torchdojo.report import figures

MISSION_IDS = ("H2",)
SUMMARY = "U-Net on few images: with/without skip connections x with/without elastic deformation, IoU and Dice"
UNUSED = {
    "train.label_smoothing": "the U-Net minimises a per-pixel binary cross-entropy + Dice loss, not a cross-entropy "
    "over class labels",
    "train.cpu_fusion": "the U-Net has no BatchNorm -> ReLU -> 2x2 max-pool inside one Sequential to fuse: each "
    "encoder stage's output is kept for its skip connection before it is pooled",
}
# regime -> (skip connections, elastic deformation)
REGIMES = {
    "skips+elastic": (True, True),
    "skips": (True, False),
    "no-skips+elastic": (False, True),
    "no-skips": (False, False),
}


@dataclasses.dataclass
class Config:
    dataset: str = "fashion-mnist"
    regimes: tuple[str, ...] = tuple(REGIMES)
    train_images: int = 32  # the few training images
    repeats: int = 8  # an epoch draws each training image this many times (each a new deformation, with elastic)
    val_images: int = 64  # held-out training-split scenes that pick each regime's best epoch
    eval_images: int = 500  # held-out test-split scenes the IoU/Dice are measured on
    canvas: int = 32  # scene side (a multiple of 2**depth)
    clutter: float = 0.5  # background clutter brightness (the items' own pixels are 0..1)
    pixel_noise: float = 0.08  # std of the Gaussian pixel noise on every scene
    mask_threshold: float = 0.1  # an item pixel brighter than this is foreground
    base: int = 16  # U-Net channels at full resolution (doubling per level)
    depth: int = 3  # poolings
    elastic_alpha: float = 30.0  # ElasticTransform displacement strength (pixels ~ alpha / 2 x the smoothed field)
    elastic_sigma: float = 3.0  # ElasticTransform smoothness of the displacement field
    dice_weight: float = 1.0  # loss = BCE + dice_weight x (1 - soft Dice)
    seed: int = 0
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            epochs=25, batch_size=16, eval_batch_size=128, lr=3e-3, schedule="cosine", monitor="val_loss"
        )
    )

    def __post_init__(self) -> None:
        for r in self.regimes:
            if r not in REGIMES:
                raise DojoError(f"unknown regime {r!r}", f"regimes: {', '.join(REGIMES)}")
        if not self.regimes:
            raise DojoError("regimes is empty", f"pick one or more of {', '.join(REGIMES)}")
        for name in ("train_images", "repeats", "val_images", "eval_images"):
            if getattr(self, name) < 1:
                raise DojoError(f"{name} must be >= 1, got {getattr(self, name)}", f"e.g. --set {name}=32")
        for name in ("clutter", "mask_threshold"):
            if not 0 <= getattr(self, name) < 1:
                raise DojoError(f"{name} must be in [0, 1), got {getattr(self, name)}", f"e.g. --set {name}=0.1")
        if self.elastic_sigma <= 0:
            raise DojoError(f"elastic_sigma must be > 0, got {self.elastic_sigma}", "e.g. --set elastic_sigma=3")


SCALES = {
    "smoke": {
        "train_images": 8,
        "repeats": 2,
        "val_images": 16,
        "eval_images": 32,
        "base": 4,
        "depth": 2,
        "train": {"epochs": 1, "batch_size": 8, "max_batches": 2},
    },
    "small": {"base": 8, "repeats": 4, "train": {"epochs": 20}},
    "full": {"train_images": 64, "eval_images": 2000, "train": {"epochs": 60}},
}


def seg_metrics(logits: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image IoU, Dice and pixel accuracy of `logits > 0` against `mask` (B, 1, H, W), as (B,) tensors. An
    image whose prediction and mask are both empty scores 1 (nothing to find, nothing found)."""
    pred, true = (logits > 0).flatten(1), (mask > 0.5).flatten(1)
    inter = (pred & true).sum(1).float()
    union = (pred | true).sum(1).float()
    total = pred.sum(1).float() + true.sum(1).float()
    empty = union == 0
    iou = torch.where(empty, torch.ones_like(inter), inter / union.clamp_min(1))
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp_min(1))
    return {"iou": iou, "dice": dice, "acc": (pred == true).float().mean(1)}


def seg_step(dice_weight: float) -> Any:
    """BCE with logits + dice_weight x (1 - soft Dice) per batch; IoU, Dice and pixel accuracy summed per image."""

    def step(model: nn.Module, batch: Any) -> StepOutput:
        x, mask = batch
        logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, mask)
        if dice_weight:
            p = torch.sigmoid(logits).flatten(1)
            m = mask.flatten(1)
            soft = (2 * (p * m).sum(1) + 1) / (p.sum(1) + m.sum(1) + 1)
            loss = loss + dice_weight * (1 - soft.mean())
        metrics = {k: v.detach().sum() for k, v in seg_metrics(logits.detach(), mask).items()}
        return StepOutput(loss, len(x), metrics)

    return step


@dataclasses.dataclass
class Scenes:
    train: ImageData
    val: ImageData
    test: ImageData
    mean: float
    std: float


def load(cfg: Config, ctx: Context) -> tuple[str, Scenes]:
    """Few training scenes, validation scenes from other training-split images, test scenes from the test split."""
    data = ctx.load_data(cfg.dataset)
    if data.train.shape[0] != 1:
        raise DojoError(
            f"unet makes scenes from 1-channel images; {data.name} has {data.train.shape[0]}",
            "use dataset=fashion-mnist or mnist",
        )
    UNet(depth=cfg.depth).check_size(cfg.canvas, cfg.canvas)
    if max(data.train.shape[1:]) > cfg.canvas:
        raise DojoError(
            f"{data.name} images ({data.train.shape[1]}x{data.train.shape[2]}) do not fit canvas={cfg.canvas}",
            "raise canvas (a multiple of 2**depth)",
        )
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.seed))
    tr, va = idx[: cfg.train_images], idx[cfg.train_images : cfg.train_images + cfg.val_images]
    test = random_subset(data.test, cfg.eval_images, cfg.seed + 2)
    opts = {"clutter": cfg.clutter, "noise": cfg.pixel_noise, "threshold": cfg.mask_threshold}
    train = make_scenes(data.train.take(tr), cfg.canvas, cfg.seed, **opts)
    val = make_scenes(data.train.take(va), cfg.canvas, cfg.seed + 1, **opts)
    test = make_scenes(test, cfg.canvas, cfg.seed + 2, **opts)
    mean, std = scene_stats(train)
    dev = ctx.device
    return data.name, Scenes(train.to(dev), val.to(dev), test.to(dev), mean, std)


def show_task(name: str, scenes: Scenes, cfg: Config, ctx: Context) -> None:
    """The task and the deformation: training scenes with their masks, and three random elastic draws of each."""
    x = scenes.train.x[:6].cpu()
    views = overlay(x[:, :1], x[:, 1:])
    aug = elastic(cfg.elastic_alpha, cfg.elastic_sigma)
    for d in range(3):
        y = aug(x, torch.Generator().manual_seed(cfg.seed + 100 + d))
        views += overlay(y[:, :1], y[:, 1:])
    figures.image_grid(
        views,
        ctx.run.figure_path("deformation"),
        ncols=6,
        row_labels=["original", "elastic 1", "elastic 2", "elastic 3"],
        title="training scenes with their masks (red), and random elastic deformations of both",
        cell=1.4,
    )
    ctx.report.heading("H2.1 The task and the deformation")
    ctx.report.text(
        f"Each scene puts one {name} item at a random place on a {cfg.canvas}x{cfg.canvas} canvas of smooth random "
        f"clutter (brightness up to {cfg.clutter}) with Gaussian pixel noise (std {cfg.pixel_noise}); the target is "
        f"the item's foreground (its pixels above {cfg.mask_threshold}). The clutter is as bright as the items' "
        "darker parts, so no brightness threshold separates them: the net must recognise the item's shape and "
        f"texture. Training uses only {len(scenes.train)} scenes, each drawn {cfg.repeats} times per epoch; "
        f"{len(scenes.val)} other training-split scenes pick each regime's best epoch (lowest validation loss) and "
        f"{len(scenes.test)} scenes from test-split images measure it.\n\nElastic deformation: torchvision's "
        f"v2.ElasticTransform (alpha {cfg.elastic_alpha:g}, sigma {cfg.elastic_sigma:g}) draws one smooth random "
        "displacement field per example and applies it to the scene (bilinear) and to its mask (a tv_tensors.Mask: "
        "nearest neighbour, so the mask stays binary and on the deformed item): new, plausible shapes from the same "
        "few images, as in the U-Net paper."
    )
    ctx.report.figure("deformation.png", "top row: training scenes, mask in red; below: three elastic draws of each")


def train_regime(j: int, name: str, scenes: Scenes, cfg: Config, ctx: Context) -> dict[str, Any]:
    """One regime (stage = its name): trained, then measured on the test scenes, per image."""
    skips, deform = REGIMES[name]
    tcfg = ctx.train_config()
    torch.manual_seed(cfg.seed)  # the same initial encoder weights for every regime (skip ones add decoder inputs)
    model = UNet(1, 1, cfg.base, cfg.depth, skips).to(ctx.device)
    ctx.log(f"== {name} ({sum(p.numel() for p in model.parameters()):,} params)")
    aug = elastic(cfg.elastic_alpha, cfg.elastic_sigma) if deform else None

    def batches(d: ImageData, size: int, train: bool) -> SegBatches:
        return SegBatches(
            d,
            size,
            scenes.mean,
            scenes.std,
            shuffle=train,
            augment=aug if train else None,
            repeats=cfg.repeats if train else 1,
            seed=cfg.seed + j,
        )

    step = seg_step(cfg.dice_weight)
    res = fit(
        model,
        batches(scenes.train, tcfg.batch_size, True),
        batches(scenes.val, tcfg.eval_batch_size, False),
        tcfg,
        device=ctx.device,
        stage=name,
        run=ctx.run,
        resume=ctx.resume,
        step=step,
        verbose=ctx.verbose,
    )
    model.eval()
    per = {"iou": [], "dice": [], "acc": []}
    logits = []
    with torch.no_grad():
        test = SegBatches(scenes.test, tcfg.eval_batch_size, scenes.mean, scenes.std, whole=True)
        for k, (x, mask) in enumerate(test):
            if tcfg.max_batches and k >= tcfg.max_batches:
                break
            out = model(x)
            logits.append(out.cpu())
            for key, v in seg_metrics(out, mask).items():
                per[key] += v.tolist()
    return {
        "regime": name,
        "skips": skips,
        "elastic": deform,
        "params": sum(p.numel() for p in model.parameters()),
        **{f"test_{k}": sum(v) / len(v) for k, v in per.items()},
        "test scenes": len(per["iou"]),
        "best_epoch": res.best_epoch,
        "train_iou": res.history[res.best_epoch - 1]["train_iou"],
        "s_per_epoch": res.seconds_per_epoch,
        "per_image": per,
        "logits": torch.cat(logits),
        "history": res.history,
        "tcfg": tcfg,
    }


def report_regimes(rows: list[dict[str, Any]], scenes: Scenes, ctx: Context) -> None:
    """H2: IoU/Dice per regime (the 2x2 table), curves and predictions on test scenes."""
    ctx.report.heading("H2.2 Skip connections x elastic deformation")
    hp = hyper_parameters(rows[0]["tcfg"])
    ctx.report.table([{"setting": k, "value": v} for k, v in hp.items()], caption="training (every regime)")
    cols = [
        "regime",
        "skips",
        "elastic",
        "params",
        "test_iou",
        "test_dice",
        "test_acc",
        "train_iou",
        "best_epoch",
        "test scenes",
        "s_per_epoch",
    ]
    ctx.report.table(
        rows,
        caption="held-out test scenes: mean IoU, Dice and pixel accuracy per regime "
        "(train_iou: the best epoch's training IoU, on deformed scenes when elastic)",
        columns=cols,
    )
    grid = {(r["skips"], r["elastic"]): r["test_iou"] for r in rows}
    ctx.report.table(
        [
            {
                "": "skips" if s else "no skips",
                **{("elastic" if e else "no elastic"): grid.get((s, e), "") for e in (True, False)},
            }
            for s in (True, False)
        ],
        caption="mean test IoU, 2x2",
    )
    figures.curves(
        {r["regime"]: r["history"] for r in rows},
        ctx.run.figure_path("curves"),
        keys=("loss", "iou"),
        title="training (solid) and validation (dashed)",
    )
    ctx.report.figure("curves.png", "loss and IoU per epoch, each regime (training IoU on the scenes it trained on)")
    n = min(8, len(rows[0]["logits"]))
    test = scenes.test.x[:n].cpu()
    views = overlay(test[:, :1], torch.zeros_like(test[:, 1:])) + overlay(test[:, :1], test[:, 1:])
    for r in rows:
        views += overlay(test[:, :1], (r["logits"][:n] > 0).to(torch.uint8))
    figures.image_grid(
        views,
        ctx.run.figure_path("predictions"),
        ncols=n,
        row_labels=["scene", "true mask", *[r["regime"] for r in rows]],
        cell=1.3,
        title="held-out test scenes: the true mask and each regime's prediction (red)",
    )
    ctx.report.figure("predictions.png", "test scenes, their true masks, and each regime's predicted mask")


def _factor(rows: list[dict[str, Any]], a: str, b: str) -> str | None:
    """Regime a vs regime b on test IoU: the one-seed verdict, and the paired per-image interval of a - b."""
    by = {r["regime"]: r for r in rows}
    if a not in by or b not in by:
        return None
    cmp = stats.compare({a: [by[a]["test_iou"]], b: [by[b]["test_iou"]]}, metric="test IoU", pairs=[(a, b)])[0]
    diffs = [x - y for x, y in zip(by[a]["per_image"]["iou"], by[b]["per_image"]["iou"], strict=True)]
    est = stats.estimate(diffs)
    return (
        f"{cmp.text} Over the {est.n} test scenes (these trained weights only), the per-scene IoU difference "
        f"{a} - {b} is {est.mean:+.3f} (95% interval {est.low:+.3f} to {est.high:+.3f})."
    )


def conclude(rows: list[dict[str, Any]], ctx: Context) -> list[str]:
    """The question and a short answer from the 2x2 measurements."""
    lines = [
        _factor(rows, "skips", "no-skips"),
        _factor(rows, "skips+elastic", "no-skips+elastic"),
        _factor(rows, "skips+elastic", "skips"),
        _factor(rows, "no-skips+elastic", "no-skips"),
    ]
    lines = [x for x in lines if x]
    gaps = ", ".join(f"{r['regime']} {r['train_iou'] - r['test_iou']:+.3f}" for r in rows)
    lines.append(
        f"Generalisation gap (the best epoch's training IoU - test IoU): {gaps}. A smaller gap with elastic "
        "deformation means it kept the net from fitting the few training scenes as closely, whether or not "
        "the test IoU rose."
    )
    last = [r["regime"] for r in rows if r["best_epoch"] == len(r["history"])]
    if last:
        lines.append(f"Still improving at the last epoch (best epoch = last): {', '.join(last)}; more epochs may help.")
    ctx.report.heading("Question and answer")
    ctx.report.text(
        "Question: why do U-Net's skip connections between encoder and decoder matter, and what does random "
        "elastic deformation do when a segmentation net trains on few images?\n\nAnswer, from this run's "
        "measurements:\n\n" + "\n".join(f"- {x}" for x in lines) + "\n- Why: the decoder upsamples from a "
        "bottleneck a few pixels across; without skips it must re-invent where the boundaries were, with them it "
        "reads the full-resolution encoder features of the same place. Elastic deformation shows the net new, "
        "plausible shapes of the same few items, against memorising them; whether that helps at this size is "
        "what the elastic rows above measure."
    )
    return lines


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    name, scenes = load(cfg, ctx)
    show_task(name, scenes, cfg, ctx)
    rows = [train_regime(j, r, scenes, cfg, ctx) for j, r in enumerate(cfg.regimes)]
    report_regimes(rows, scenes, ctx)
    answers = conclude(rows, ctx)
    keep = ("skips", "elastic", "params", "test_iou", "test_dice", "test_acc", "train_iou", "best_epoch", "s_per_epoch")
    return {"dataset": name, "regimes": {r["regime"]: {k: r[k] for k in keep} for r in rows}, "answers": answers}
