"""YOLO v1-v3, measured (MISSION H3, and B7's output depths): on a synthetic detection set rendered offline
(shapes in colours, two labels per object), independent sigmoid class outputs vs softmax for two-label
boxes, non-maximum suppression (ours against torchvision.ops.nms) and the duplicates it removes, training on
several input sizes vs one, anchor priors by k-means on 1 - IoU vs Euclidean, YOLOv2's direct location
prediction vs unconstrained offsets, and a YOLOv1-style head against a YOLOv3-style three-scale one.
"""

import dataclasses
from typing import Any

import torch

from torchdojo import stats
from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.detect.boxes import kmeans, mean_best_iou, nms
from torchdojo.detect.model import Detector
from torchdojo.detect.shapes import CLASSES, Detections, render
from torchdojo.detect.train import DetBatches, evaluate_detector, yolo_step
from torchdojo.engine import fit
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context

MISSION_IDS = ("H3", "B7")
SUMMARY = "YOLO v1-v3 measured: sigmoid vs softmax labels, NMS, multi-size training, k-means anchors, offsets, scales"
UNUSED = {
    "train.label_smoothing": "the detector's class loss is per-label BCE or a two-label softmax target, not a "
    "smoothed one-hot cross-entropy",
    "train.cpu_fusion": "the detector's blocks are conv -> BN -> LeakyReLU with no max-pool to fuse",
}


@dataclasses.dataclass(frozen=True)
class Regime:
    strides: tuple[int, ...]
    classes: str  # sigmoid | softmax
    offsets: str  # sigmoid (direct location prediction) | linear (unconstrained)
    multi_size: bool
    why: str


REGIMES: dict[str, Regime] = {
    "v2": Regime((8,), "sigmoid", "sigmoid", False, "one scale (stride 8), k-means priors, sigmoid offsets and labels"),
    "softmax-labels": Regime((8,), "softmax", "sigmoid", False, "the same with one softmax over the six labels"),
    "unconstrained-offsets": Regime((8,), "sigmoid", "linear", False, "centre = cell centre + t x prior size"),
    "multi-size": Regime((8,), "sigmoid", "sigmoid", True, "v2 trained on a random input size per batch"),
    "v3-three-scales": Regime((8, 16, 32), "sigmoid", "sigmoid", False, "three output scales, 3 priors each"),
}


@dataclasses.dataclass
class Config:
    canvas: int = 64  # rendered canvas side (a multiple of 32)
    train_images: int = 1000
    val_images: int = 300
    test_images: int = 400
    max_objects: int = 4
    width: int = 12  # the detector's first conv width (x2, x4, x8 deeper)
    anchors: int = 5  # k-means priors of the one-scale regimes (the three-scale one uses 9)
    train_sizes: tuple[int, ...] = (32, 64, 96)  # multi-size regime: a random one per batch
    eval_sizes: tuple[int, ...] = (32, 64, 96, 128)
    conf: float = 0.3  # objectness threshold of a detection
    nms_iou: float = 0.5
    regimes: tuple[str, ...] = tuple(REGIMES)
    seed: int = 0
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            epochs=8, batch_size=32, optimizer="adamw", lr=3e-3, schedule="onecycle", monitor="val_loss"
        )
    )

    def __post_init__(self) -> None:
        for r in self.regimes:
            if r not in REGIMES:
                raise DojoError(f"unknown regime {r!r}", f"regimes: {', '.join(REGIMES)}")
        for s in (self.canvas, *self.train_sizes, *self.eval_sizes):
            if s < 32 or s % 32:
                raise DojoError(f"image sizes must be multiples of 32, got {s}", "e.g. --set eval_sizes=32,64,96")
        if not 0 < self.conf < 1 or not 0 < self.nms_iou < 1:
            raise DojoError("conf and nms_iou must be in (0, 1)", "--set conf=0.3 nms_iou=0.5")


SCALES = {
    "smoke": {
        "train_images": 64,
        "val_images": 16,
        "test_images": 32,
        "width": 4,
        "eval_sizes": "32,64",
        "train": {"epochs": 1, "batch_size": 16, "max_batches": 2},
    },
    "small": {},
    "full": {"train_images": 8000, "test_images": 1000, "width": 16, "train": {"epochs": 30}},
}


def anchors_section(train: Detections, cfg: Config, ctx: Context) -> dict[str, Any]:
    """YOLOv2's box priors: k-means with 1 - IoU against Euclidean k-means on (w, h)."""
    wh = torch.cat([b[:, 2:] - b[:, :2] for b in train.boxes])
    rows, priors = [], {}
    for k in sorted({3, cfg.anchors, 9}):
        row: dict[str, Any] = {"priors": k}
        for metric in ("iou", "euclidean"):
            p = kmeans(wh, k, metric, seed=cfg.seed)
            priors[(k, metric)] = p
            row[f"mean IoU ({metric} k-means)"] = mean_best_iou(wh, p)
        rows.append(row)
    _priors_figure(wh, priors[(cfg.anchors, "iou")], priors[(cfg.anchors, "euclidean")], ctx)
    ctx.report.heading("H3.1 Anchor priors by k-means (YOLOv2)")
    ctx.report.text(
        f"The {len(wh):,} training boxes' (width, height) clustered into k priors two ways; each box's IoU with its "
        "best prior (both centred), averaged: how well the priors fit the boxes a cell must predict."
    )
    ctx.report.table(rows, caption="mean IoU of a box with its nearest prior")
    gaps = [r["mean IoU (iou k-means)"] - r["mean IoU (euclidean k-means)"] for r in rows]
    ctx.report.text(
        f"Measured: 1 - IoU k-means fits better at every k (by {min(gaps):+.3f} to {max(gaps):+.3f} mean IoU): "
        "Euclidean distance weighs a 4-pixel error on a large box like one on a small box, so its clusters "
        "drift to the large boxes; IoU is scale-free, which is why YOLOv2 uses it."
        if min(gaps) > 0
        else f"Measured: the gaps are {', '.join(f'{g:+.3f}' for g in gaps)}: on these boxes the two clusterings "
        "fit about equally; IoU's advantage shows when box sizes are spread wider."
    )
    ctx.report.figure("h3_priors.png", "training box sizes and the k-means priors of both distances")
    p9 = priors[(9, "iou")]
    return {"mean_iou": rows, "priors": priors[(cfg.anchors, "iou")], "priors9": p9}


def _priors_figure(wh: torch.Tensor, iou_p: torch.Tensor, euc_p: torch.Tensor, ctx: Context) -> None:
    from torchdojo.report.figures import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(wh[:, 0], wh[:, 1], s=3, alpha=0.3, color="grey", label="boxes")
    ax.scatter(iou_p[:, 0], iou_p[:, 1], s=60, marker="x", color="C0", label="1 - IoU k-means")
    ax.scatter(euc_p[:, 0], euc_p[:, 1], s=60, marker="+", color="C3", label="Euclidean k-means")
    ax.set_xlabel("box width (px)")
    ax.set_ylabel("box height (px)")
    ax.legend(fontsize=8)
    _save(fig, ctx.run.figure_path("h3_priors"))


def nms_section(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Our NMS against torchvision.ops.nms on random boxes."""
    import torchvision

    g = torch.Generator().manual_seed(cfg.seed)
    trials, same = 200, 0
    for _ in range(trials):
        n = int(torch.randint(1, 60, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 50
        b = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 30], 1)
        s = torch.rand(n, generator=g)
        t = float(torch.rand(1, generator=g) * 0.8 + 0.1)
        same += torch.equal(nms(b, s, t), torchvision.ops.nms(b, s, t))
    ctx.report.heading("H3.2 Non-maximum suppression")
    ctx.report.text(
        f"Greedy NMS (keep the best-scoring box, drop every box overlapping it by more than the IoU threshold, "
        f"repeat), written here, against torchvision.ops.nms on {trials} random sets of 1-59 boxes and thresholds "
        f"0.1-0.9: identical keep lists in {same} of {trials}."
    )
    return {"trials": trials, "identical": same}


def train_regime(
    name: str, data: dict[str, Detections], priors: dict[str, torch.Tensor], cfg: Config, ctx: Context
) -> dict[str, Any]:
    r = REGIMES[name]
    anchors = [priors["one"]] if len(r.strides) == 1 else list(priors["nine"].view(3, 3, 2))
    torch.manual_seed(cfg.seed)
    model = Detector(r.strides, anchors, len(CLASSES), cfg.width).to(ctx.device)
    tcfg = ctx.train_config()
    step = yolo_step(r.classes, r.offsets, cfg.train_sizes if r.multi_size else ())
    ctx.log(f"== {name} ({sum(p.numel() for p in model.parameters()):,} params)")
    result = fit(
        model,
        DetBatches(data["train"], tcfg.batch_size, shuffle=True, seed=cfg.seed),
        DetBatches(data["val"], tcfg.eval_batch_size),
        tcfg,
        device=ctx.device,
        stage=name,
        run=ctx.run,
        step=step,
        resume=ctx.resume,
        verbose=ctx.verbose,
    )
    model.cpu().eval()
    sizes = cfg.eval_sizes if name in ("v2", "multi-size") else (cfg.canvas,)
    ev = {s: evaluate_detector(model, data["test"], r.offsets, r.classes, s, cfg.nms_iou, cfg.conf) for s in sizes}
    losses = [h["train_loss"] for h in result.history]
    ok, why = stats.learned(
        ev[cfg.canvas]["recall"], chance_or_majority=0.0, n_eval=ev[cfg.canvas]["truth"], loss_history=losses
    )
    return {"model": model, "history": result.history, "eval": ev, "tcfg": tcfg, **stats.learned_entry(ok, why)}


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    data = {
        "train": render(cfg.train_images, cfg.canvas, cfg.max_objects, seed=cfg.seed),
        "val": render(cfg.val_images, cfg.canvas, cfg.max_objects, seed=cfg.seed + 1),
        "test": render(cfg.test_images, cfg.canvas, cfg.max_objects, seed=cfg.seed + 2),
    }
    from torchdojo.detect import report as yolo_report

    yolo_report.data_section(data["train"], cfg, ctx)
    anchors = anchors_section(data["train"], cfg, ctx)
    summary: dict[str, Any] = {"anchors": {"mean_iou": anchors["mean_iou"]}, "nms": nms_section(cfg, ctx)}
    ctx.report.save(ctx.run.path)
    priors = {"one": anchors["priors"], "nine": anchors["priors9"]}
    done = {name: train_regime(name, data, priors, cfg, ctx) for name in cfg.regimes}
    summary["regimes"] = yolo_report.regimes_section(done, data["test"], cfg, ctx)
    summary["heads"] = yolo_report.heads_section(cfg, ctx)
    ctx.report.table(
        [{"setting": k, "value": v} for k, v in hyper_parameters(next(iter(done.values()))["tcfg"]).items()]
        if done
        else [],
        caption="training settings (every regime)",
    )
    yolo_report.answers(summary, cfg, ctx)
    return summary
