"""Batches, the YOLO loss as an engine Step, decoding, and detection metrics."""

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from torchdojo.detect.boxes import iou, nms, wh_iou
from torchdojo.detect.model import Detector
from torchdojo.detect.shapes import Detections
from torchdojo.steps import StepOutput

MEAN, STD = 40.0, 80.0  # pixel normalisation for the synthetic canvases
# A canvas has ~2.5 objects among hundreds of priors: an object's objectness counts this many times a background
# prior's (measured: at 1 every objectness stays under 0.3 for the first epochs and recall is ~1%; at 5, ~70%)
OBJ_POS_WEIGHT = 5.0


class DetBatches:
    """(images, boxes (B, K, 4), labels (B, K, 2), counts (B,)) batches; boxes padded with zeros, labels -1."""

    def __init__(self, data: Detections, batch_size: int, shuffle: bool = False, seed: int = 0):
        self.data, self.batch_size, self.shuffle, self.seed, self._epoch = data, batch_size, shuffle, seed, 0
        self.kmax = max(len(b) for b in data.boxes)

    def set_epoch(self, epoch: int) -> "DetBatches":
        self._epoch = epoch
        return self

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.data)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self._epoch))
            if self.shuffle
            else torch.arange(n)
        )
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size].tolist()
            yield collate(self.data, idx, self.kmax)


def collate(data: Detections, idx: Sequence[int], kmax: int) -> tuple[torch.Tensor, ...]:
    x = (data.images[idx].float() - MEAN) / STD
    boxes = torch.zeros(len(idx), kmax, 4)
    labels = torch.full((len(idx), kmax, 2), -1, dtype=torch.int64)
    counts = torch.zeros(len(idx), dtype=torch.int64)
    for j, i in enumerate(idx):
        k = len(data.boxes[i])
        boxes[j, :k], labels[j, :k], counts[j] = data.boxes[i], data.labels[i], k
    return x, boxes, labels, counts


def _targets(
    model: Detector, boxes: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, size: int
) -> list[dict[str, torch.Tensor]]:
    """Each true box goes to the prior (over every scale) whose shape fits it best, in the cell holding its
    centre: YOLO's assignment. Per scale: object mask, the box's centre/size and its two labels."""
    anchors = [model.anchors(s) for s in model.strides]
    flat = torch.cat(anchors)
    owner = torch.cat([torch.full((len(a),), i) for i, a in enumerate(anchors)])
    local = torch.cat([torch.arange(len(a)) for a in anchors])
    out = []
    for s, a in zip(model.strides, anchors, strict=True):
        g = size // s
        out.append(
            {
                "obj": torch.zeros(len(boxes), len(a), g, g, device=boxes.device),
                "xy": torch.zeros(len(boxes), len(a), 2, g, g, device=boxes.device),
                "wh": torch.zeros(len(boxes), len(a), 2, g, g, device=boxes.device),
                "cls": torch.zeros(len(boxes), len(a), model.num_classes, g, g, device=boxes.device),
            }
        )
    for b in range(len(boxes)):
        k = int(counts[b])
        if k == 0:
            continue
        bx = boxes[b, :k]
        wh = (bx[:, 2:] - bx[:, :2]).clamp_min(1e-3)
        centre = (bx[:, :2] + bx[:, 2:]) / 2
        best = wh_iou(wh, flat).argmax(1)
        for j in range(k):
            si, ai = int(owner[best[j]]), int(local[best[j]])
            s = model.strides[si]
            g = size // s
            gx, gy = (centre[j] / s).floor().long().clamp(0, g - 1).tolist()
            t = out[si]
            t["obj"][b, ai, gy, gx] = 1
            t["xy"][b, ai, :, gy, gx] = centre[j]
            t["wh"][b, ai, :, gy, gx] = wh[j]
            t["cls"][b, ai, :, gy, gx] = 0
            t["cls"][b, ai, labels[b, j, 0], gy, gx] = 1
            t["cls"][b, ai, 3 + labels[b, j, 1], gy, gx] = 1
    return out


def decode_xy(p: torch.Tensor, stride: int, anchors: torch.Tensor, offsets: str) -> torch.Tensor:
    """Box centres (B, A, 2, H, W) in pixels from (tx, ty). "sigmoid": YOLOv2's direct location prediction,
    c = (sigmoid(t) + cell) * stride, always inside its cell; "linear": the unconstrained anchor offset
    c = (cell + 0.5) * stride + t * prior size, which can put a cell's box anywhere in the image."""
    _, _, _, h, w = p.shape
    gy, gx = torch.meshgrid(torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij")
    cell = torch.stack([gx, gy]).float()  # (2, H, W)
    t = p[:, :, 0:2]
    if offsets == "sigmoid":
        return (t.sigmoid() + cell) * stride
    return (cell + 0.5) * stride + t * anchors.view(1, -1, 2, 1, 1)


def decode_wh(p: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    return anchors.view(1, -1, 2, 1, 1) * p[:, :, 2:4].clamp(max=6).exp()


def yolo_step(classes: str, offsets: str, sizes: Sequence[int] = ()) -> Any:
    """The YOLO loss as a Step: MSE on centres (in cells) and log sizes of the assigned priors, objectness
    BCE everywhere (objects weighted OBJ_POS_WEIGHT), and on assigned priors the class loss: independent
    sigmoid BCE ("sigmoid", both labels can be 1) or softmax cross-entropy against the two labels' 0.5/0.5
    target ("softmax"). With `sizes`, each training batch is resized to a random one of them (multi-scale
    training)."""

    def step(model: Detector, batch: Any) -> StepOutput:
        x, boxes, labels, counts = batch
        size = x.shape[-1]
        if sizes and model.training:
            new = random.Random(int(torch.randint(0, 2**31 - 1, (1,)))).choice(list(sizes))
            x = F.interpolate(x, size=(new, new), mode="bilinear", align_corners=False)
            boxes, size = boxes * (new / size), new
        outs = model(x)
        targets = _targets(model, boxes, labels, counts, size)
        pos_weight = x.new_tensor(OBJ_POS_WEIGHT)
        box = obj = cls = x.new_zeros(())
        for p, t, s in zip(outs, targets, model.strides, strict=True):
            a = model.anchors(s)
            pos = t["obj"].bool()
            obj = obj + F.binary_cross_entropy_with_logits(p[:, :, 4], t["obj"], reduction="sum", pos_weight=pos_weight)
            if pos.any():
                xy = decode_xy(p, s, a, offsets).permute(0, 1, 3, 4, 2)[pos] / s
                wh = p[:, :, 2:4].permute(0, 1, 3, 4, 2)[pos]
                txy = t["xy"].permute(0, 1, 3, 4, 2)[pos] / s
                twh = (
                    t["wh"].permute(0, 1, 3, 4, 2)[pos]
                    / a.view(1, -1, 1, 1, 2).expand_as(t["wh"].permute(0, 1, 3, 4, 2))[pos]
                ).log()
                box = box + F.mse_loss(xy, txy, reduction="sum") + F.mse_loss(wh, twh, reduction="sum")
                logits = p[:, :, 5:].permute(0, 1, 3, 4, 2)[pos]
                target = t["cls"].permute(0, 1, 3, 4, 2)[pos]
                if classes == "sigmoid":
                    cls = cls + F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
                else:
                    cls = cls - (target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum()
        n = len(x)
        loss = (5 * box + obj + cls) / n
        return StepOutput(loss, n, {"box": box.detach(), "obj": obj.detach(), "cls": cls.detach()})

    step.uses_label_smoothing = False
    return step


@torch.no_grad()
def predict(
    model: Detector, x: torch.Tensor, offsets: str, conf: float = 0.5, top_k: int = 100
) -> list[dict[str, torch.Tensor]]:
    """Per image, the (at most `top_k`) predictions above `conf` objectness, best first: boxes (x1, y1, x2, y2),
    scores, class logits, and the output scale each came from."""
    model.eval()
    outs = model(x)
    res = [{"boxes": [], "scores": [], "logits": [], "scale": []} for _ in range(len(x))]
    for si, (p, s) in enumerate(zip(outs, model.strides, strict=True)):
        a = model.anchors(s)
        xy, wh = decode_xy(p, s, a, offsets), decode_wh(p, a)
        box = torch.cat([xy - wh / 2, xy + wh / 2], 2).permute(0, 1, 3, 4, 2).reshape(len(x), -1, 4)
        score = p[:, :, 4].sigmoid().reshape(len(x), -1)
        logits = p[:, :, 5:].permute(0, 1, 3, 4, 2).reshape(len(x), -1, model.num_classes)
        for b in range(len(x)):
            keep = score[b] > conf
            res[b]["boxes"].append(box[b, keep])
            res[b]["scores"].append(score[b, keep])
            res[b]["logits"].append(logits[b, keep])
            res[b]["scale"].append(torch.full((int(keep.sum()),), si))
    out = [{k: torch.cat(v) for k, v in r.items()} for r in res]
    for r in out:  # the top_k best before NMS, as detectors do: an untrained net fires everywhere
        top = r["scores"].argsort(descending=True)[:top_k]
        for k in r:
            r[k] = r[k][top]
    return out


def match(pred: torch.Tensor, truth: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, int]:
    """Greedy matching of predictions (by the given order) to true boxes at IoU >= threshold: for each true box
    the index of its prediction (-1: missed), and how many further predictions hit an already-found box
    (duplicates)."""
    found = torch.full((len(truth),), -1, dtype=torch.int64)
    duplicates = 0
    if len(pred) == 0 or len(truth) == 0:
        return found, 0
    m = iou(pred, truth)
    for i in range(len(pred)):
        j = int(m[i].argmax())
        if m[i, j] < threshold:
            continue
        if found[j] >= 0:
            duplicates += 1
        else:
            found[j] = i
    return found, duplicates


def evaluate_detector(
    model: Detector,
    data: Detections,
    offsets: str,
    classes: str,
    size: int | None = None,
    nms_iou: float = 0.5,
    conf: float = 0.3,
) -> dict[str, Any]:
    """Recall, precision, duplicates before/after NMS, the two-label accuracy of found boxes, and recall per
    object size (small < 12 px, medium < 20, large) and per output scale, on `data` (resized to `size`)."""
    stats = {"truth": 0, "found": 0, "pred": 0, "tp": 0, "dup_raw": 0, "dup_nms": 0, "both_labels": 0, "top2": 0}
    by_size = {"small": [0, 0], "medium": [0, 0], "large": [0, 0]}
    by_scale: dict[int, int] = {}
    for i in range(0, len(data), 128):
        idx = list(range(i, min(i + 128, len(data))))
        x, _, _, _ = collate(data, idx, max(len(data.boxes[j]) for j in idx))
        scale = 1.0
        if size and size != x.shape[-1]:
            scale = size / x.shape[-1]
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        for r, j in zip(predict(model, x, offsets, conf), idx, strict=True):
            truth, lab = data.boxes[j] * scale, data.labels[j]
            _, dup = match(r["boxes"], truth)  # predictions come best first
            keep = nms(r["boxes"], r["scores"], nms_iou)
            found, dup_after = match(r["boxes"][keep], truth)
            stats["dup_raw"] += dup
            stats["dup_nms"] += dup_after
            stats["truth"] += len(truth)
            stats["pred"] += len(keep)
            stats["tp"] += int((found >= 0).sum())
            side = (truth[:, 2:] - truth[:, :2]).max(1).values / scale
            for t in range(len(truth)):
                bucket = "small" if side[t] < 12 else "medium" if side[t] < 20 else "large"
                by_size[bucket][1] += 1
                if found[t] < 0:
                    continue
                by_size[bucket][0] += 1
                k = keep[found[t]]
                by_scale[int(r["scale"][k])] = by_scale.get(int(r["scale"][k]), 0) + 1
                logits = r["logits"][k]
                true_set = {int(lab[t, 0]), 3 + int(lab[t, 1])}
                probs = logits.sigmoid() if classes == "sigmoid" else logits.softmax(0)
                stats["both_labels"] += {int(c) for c in torch.nonzero(probs > 0.5).flatten()} == true_set
                stats["top2"] += set(logits.topk(2).indices.tolist()) == true_set
    tp = max(stats["tp"], 1)
    return {
        "truth": stats["truth"],
        "recall": stats["tp"] / max(stats["truth"], 1),
        "precision": stats["tp"] / max(stats["pred"], 1),
        "duplicates_before_nms": stats["dup_raw"],
        "duplicates_after_nms": stats["dup_nms"],
        "both_labels_right": stats["both_labels"] / tp,
        "top2_labels_right": stats["top2"] / tp,
        "recall_by_size": {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in by_size.items()},
        "objects_by_size": {k: v[1] for k, v in by_size.items()},
        "found_by_scale": {str(model.strides[k]): v for k, v in sorted(by_scale.items())},
    }
