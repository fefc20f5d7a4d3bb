"""The yolo experiment's report sections: the data, the trained regimes compared, v1 vs v3 heads, answers."""

from typing import Any

import torch

from torchdojo.detect.boxes import nms
from torchdojo.detect.model import Detector, YoloV1Head
from torchdojo.detect.shapes import CLASSES, Detections
from torchdojo.detect.train import collate, predict
from torchdojo.experiments.base import Context
from torchdojo.report import figures


def _draw(ax: Any, img: torch.Tensor, boxes: torch.Tensor, colour: str, texts: list[str] | None = None) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(img.permute(1, 2, 0).numpy())
    for i, b in enumerate(boxes.tolist()):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color=colour, lw=1))
        if texts:
            ax.text(b[0], b[1] - 1, texts[i], color=colour, fontsize=5)
    ax.set_axis_off()


def data_section(train: Detections, cfg: Any, ctx: Context) -> None:
    from torchdojo.report.figures import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, 6, figsize=(12, 2.3))
    for ax, i in zip(axes, range(6), strict=True):
        lab = train.labels[i]
        _draw(ax, train.images[i], train.boxes[i], "white", [f"{CLASSES[a]}+{CLASSES[3 + b]}" for a, b in lab.tolist()])
    _save(fig, ctx.run.figure_path("h3_data"))
    n_obj = sum(len(b) for b in train.boxes)
    ctx.report.heading("H3. The synthetic detection set")
    ctx.report.text(
        f"{len(train):,} training canvases of {cfg.canvas}x{cfg.canvas} px, rendered offline and seeded: 1-"
        f"{cfg.max_objects} objects each ({n_obj:,} in all), a rectangle, ellipse or triangle in red, green or "
        "blue, of height and width drawn independently (log-uniform 6-30 px, so more small objects than large), "
        "overlapping freely, on a noisy dark background. Every object has two true labels out of six (its shape "
        "and its colour): the multi-label case. Validation and test sets are rendered with other seeds."
    )
    ctx.report.figure("h3_data.png", "training canvases with their boxes and both labels")


def _row(name: str, r: dict[str, Any], size: int) -> dict[str, Any]:
    e = r["eval"][size]
    return {
        "regime": name,
        "recall": e["recall"],
        "precision": e["precision"],
        "both labels right": e["both_labels_right"],
        "top-2 labels right": e["top2_labels_right"],
        "duplicates before NMS": e["duplicates_before_nms"],
        "after NMS": e["duplicates_after_nms"],
        "learned": "yes" if r["learned"] else f"no: {r['learned_reason']}",
    }


def regimes_section(done: dict[str, Any], test: Detections, cfg: Any, ctx: Context) -> dict[str, Any]:
    size = cfg.canvas
    ctx.report.heading("H3.3 The detectors compared")
    ctx.report.text(
        f"Each regime trains the same fully convolutional detector through the engine on the training canvases "
        f"and is tested on {len(test):,} test canvases: a detection is a prior with objectness > {cfg.conf}; "
        f"after NMS at IoU {cfg.nms_iou} it finds a true box when their IoU is >= 0.5 (recall), and precision is "
        "the share of detections that found one. One seed each: gaps of a few points are within noise."
    )
    ctx.report.table([_row(n, r, size) for n, r in done.items()], caption=f"test canvases at {size} px")
    figures.curves(
        {n: r["history"] for n, r in done.items()}, ctx.run.figure_path("h3_curves"), keys=("loss", "box"), title=""
    )
    ctx.report.figure("h3_curves.png", "training (solid) and validation (dashed) loss and box loss per epoch")
    out: dict[str, Any] = {
        n: {
            "eval": {str(s): e for s, e in r["eval"].items()},
            "final_train_loss": r["history"][-1]["train_loss"],
            "first_epoch_box_loss": r["history"][0].get("train_box"),
            "learned": r["learned"],
            "learned_reason": r["learned_reason"],
        }
        for n, r in done.items()
    }
    texts = []
    if "v2" in done and "softmax-labels" in done:
        sig, soft = done["v2"]["eval"][size], done["softmax-labels"]["eval"][size]
        texts.append(
            f"Multi-label: with independent sigmoids {100 * sig['both_labels_right']:.1f}% of found boxes get exactly "
            f"their two labels (probability > 0.5 each); with a softmax {100 * soft['both_labels_right']:.1f}%, since "
            "two labels cannot both pass 0.5 when they share one distribution. Even told to take its top two, the "
            f"softmax gets {100 * soft['top2_labels_right']:.1f}% (sigmoid: {100 * sig['top2_labels_right']:.1f}%): "
            "softmax assumes one class per box, which is why YOLOv3 switched to logistic outputs."
        )
    if "v2" in done:
        e = done["v2"]["eval"][size]
        texts.append(
            f"NMS: before suppression v2 fires {e['duplicates_before_nms']:,} duplicate detections on already-found "
            f"boxes; after NMS {e['duplicates_after_nms']:,}."
        )
        _nms_figure(done["v2"]["model"], test, cfg, ctx)
    if "v2" in done and "unconstrained-offsets" in done:
        a, b = done["v2"], done["unconstrained-offsets"]
        box = {
            n: (r["history"][0].get("train_box", float("nan")), r["history"][-1].get("train_box", float("nan")))
            for n, r in (("a", a), ("b", b))
        }
        texts.append(
            f"Location prediction: the box loss after the first epoch is {box['a'][0]:.3g} with sigmoid offsets and "
            f"{box['b'][0]:.3g} unconstrained; at the end {box['a'][1]:.3g} vs {box['b'][1]:.3g}, recall "
            f"{100 * a['eval'][size]['recall']:.1f}% vs {100 * b['eval'][size]['recall']:.1f}%. A sigmoid keeps "
            "each predicted centre inside its own cell, so early, random predictions cannot fly across the image; "
            "unconstrained offsets can, which is the instability YOLOv2's direct location prediction removes."
        )
    if "v2" in done and "multi-size" in done:
        rows = [
            {
                "test size": s,
                "v2 (trained at 64)": done["v2"]["eval"][s]["recall"],
                "multi-size": done["multi-size"]["eval"][s]["recall"],
            }
            for s in cfg.eval_sizes
        ]
        ctx.report.table(rows, caption="recall at each test-image size (objects scale with the image)")
        worst = min(
            cfg.eval_sizes, key=lambda s: done["v2"]["eval"][s]["recall"] - done["multi-size"]["eval"][s]["recall"]
        )
        texts.append(
            f"Several input sizes: the same fully convolutional net runs at every size (its grid grows with the "
            f"image). Trained at one size, v2 falls to {100 * done['v2']['eval'][worst]['recall']:.1f}% recall at "
            f"{worst} px; trained on a random size per batch, {100 * done['multi-size']['eval'][worst]['recall']:.1f}%."
        )
    if "v3-three-scales" in done:
        rows = [
            {"regime": n, **{f"recall {k}": v for k, v in r["eval"][size]["recall_by_size"].items()}}
            for n, r in done.items()
        ]
        ctx.report.table(rows, caption="recall per object size (small < 12 px, medium < 20, large)")
        found = done["v3-three-scales"]["eval"][size]["found_by_scale"]
        texts.append(
            "Three scales: the v3-style detector's found boxes came from the stride "
            + ", ".join(f"{s} head: {n}" for s, n in found.items())
            + ": each scale takes the objects its priors fit."
        )
    ctx.report.text("\n\n".join(texts))
    return out


def _nms_figure(model: Detector, test: Detections, cfg: Any, ctx: Context) -> None:
    from torchdojo.report.figures import _plt, _save

    plt = _plt()
    x = collate(test, list(range(4)), max(len(b) for b in test.boxes[:4]))[0]
    preds = predict(model, x, "sigmoid", cfg.conf)
    fig, axes = plt.subplots(2, 4, figsize=(9, 4.6))
    for i, p in enumerate(preds):
        keep = nms(p["boxes"], p["scores"], cfg.nms_iou)
        _draw(axes[0, i], test.images[i], p["boxes"], "yellow")
        _draw(axes[1, i], test.images[i], p["boxes"][keep], "cyan")
        axes[0, i].set_title(f"{len(p['boxes'])} before NMS", fontsize=8)
        axes[1, i].set_title(f"{len(keep)} after NMS", fontsize=8)
    _save(fig, ctx.run.figure_path("h3_nms"))
    ctx.report.figure("h3_nms.png", "v2's detections on test canvases before (top) and after (bottom) NMS")


def heads_section(cfg: Any, ctx: Context) -> dict[str, Any]:
    """B7: YOLOv1's 7x7x(B*5 + C) output against YOLOv3's three scales of A*(5 + C), for 80 classes."""
    v1 = YoloV1Head(num_classes=80, boxes=2, width=8).eval()
    v3 = Detector((8, 16, 32), [torch.ones(3, 2)] * 3, 80, width=8).eval()
    with torch.no_grad():
        o1 = v1(torch.zeros(1, 3, 448, 448))
        o3 = v3(torch.zeros(1, 3, 416, 416))
    rows = [
        {
            "head": "YOLOv1 (B=2, 80 classes), 448 px",
            "outputs": "x".join(map(str, o1.shape[1:])),
            "depth": o1.shape[-1],
            "formula": "B x 5 + C = 2 x 5 + 80",
            "params": sum(p.numel() for p in v1.fc.parameters()),
        },
    ]
    for s, o in zip(v3.strides, o3, strict=True):
        rows.append(
            {
                "head": f"YOLOv3 stride {s} (3 priors, 80 classes), 416 px",
                "outputs": f"{o.shape[-2]}x{o.shape[-1]}x{o.shape[1] * o.shape[2]}",
                "depth": o.shape[1] * o.shape[2],
                "formula": "A x (5 + C) = 3 x (5 + 80)",
                "params": sum(p.numel() for p in v3.heads[str(s)].parameters()),
            }
        )
    ctx.report.heading("H3.4 YOLOv1 vs YOLOv3 heads (and B7's output depths)")
    ctx.report.text(
        "Output shapes measured by running each head (reduced backbones; the heads are as in the papers): v1 "
        "predicts B boxes per cell but one class distribution per cell, through a fully connected layer over "
        "the whole image; v3 predicts, at three strides, 3 priors per cell each with its own objectness and 80 "
        "independent class scores, through 1x1 convolutions."
    )
    ctx.report.table(rows, caption="output depth per cell: 90 for v1 and 255 for v3 (B7)")
    return {"v1_depth": int(o1.shape[-1]), "v3_depth": int(o3[0].shape[1] * o3[0].shape[2]), "rows": rows}


def answers(summary: dict[str, Any], cfg: Any, ctx: Context) -> None:
    iou = summary["anchors"]["mean_iou"]
    k = next(r for r in iou if r["priors"] == cfg.anchors)
    ctx.report.heading("The questions, answered from these measurements")
    ctx.report.text(
        "(b) Why independent logistic outputs? Because a box may carry several true labels; a softmax makes them "
        "compete (H3.3). (c) What does NMS do? It removes duplicate detections of one object: ours keeps exactly "
        f"what torchvision keeps ({summary['nms']['identical']}/{summary['nms']['trials']}), and the duplicate "
        "counts before/after are in H3.3. (d) Why train on several sizes? A fully convolutional net accepts any "
        "size; training on several makes it work at each (H3.3's size table). (e) YOLOv2's anchor problems: "
        f"priors by 1 - IoU k-means fit the boxes with mean IoU {k['mean IoU (iou k-means)']:.3f} against "
        f"{k['mean IoU (euclidean k-means)']:.3f} for Euclidean k-means ({cfg.anchors} priors), and sigmoid "
        "offsets keep each prediction in its cell (H3.3). (f) YOLOv3's architecture: three output scales with 3 "
        f"priors each, depth {summary['heads']['v3_depth']} per cell against v1's {summary['heads']['v1_depth']} "
        "(H3.4)."
    )
