"""H3: boxes, NMS (against torchvision), k-means priors, the detector and its loss, and the smoke run."""

import json

import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo.detect.boxes import iou, kmeans, mean_best_iou, nms, wh_iou
from torchdojo.detect.model import Detector, YoloV1Head
from torchdojo.detect.shapes import CLASSES, render
from torchdojo.detect.train import DetBatches, decode_xy, evaluate_detector, match, yolo_step
from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments.base import run_experiment


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), seed=st.integers(0, 2**31 - 1), threshold=st.floats(0.05, 0.95))
def test_nms_keeps_exactly_what_torchvision_keeps(n: int, seed: int, threshold: float) -> None:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 25], 1)
    scores = torch.rand(n, generator=g).round(decimals=1)  # ties too
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_iou_matches_torchvision() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 4, generator=g) * 10, torch.rand(5, 4, generator=g) * 10
    a[:, 2:] += a[:, :2]
    b[:, 2:] += b[:, :2]
    assert torch.allclose(iou(a, b), torchvision.ops.box_iou(a, b), atol=1e-6)


def test_kmeans_on_iou_fits_boxes_better_than_euclidean_on_skewed_sizes() -> None:
    d = render(400, seed=0)
    wh = torch.cat([b[:, 2:] - b[:, :2] for b in d.boxes])
    assert mean_best_iou(wh, kmeans(wh, 9, "iou")) > mean_best_iou(wh, kmeans(wh, 9, "euclidean"))
    priors = kmeans(wh, 5, "iou")
    assert priors.shape == (5, 2) and (priors.prod(-1).diff() >= 0).all()  # sorted by area
    assert torch.allclose(wh_iou(priors, priors).diagonal(), torch.ones(5))


def test_rendered_objects_have_two_labels_and_boxes_inside_the_canvas() -> None:
    d = render(50, size=64, seed=3)
    for b, lab in zip(d.boxes, d.labels, strict=True):
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all() and (b[:, 2:] > b[:, :2]).all()
        assert lab.shape[1] == 2 and lab[:, 0].max() < 3 and lab[:, 1].max() < 3
    assert len(CLASSES) == 6


def test_sigmoid_offsets_keep_centres_in_their_cell_and_linear_ones_do_not() -> None:
    p = torch.randn(1, 1, 6, 4, 4) * 3  # (sigmoid saturates to exactly 1.0 in float32 beyond ~17)
    anchors = torch.tensor([[10.0, 10.0]])
    xy = decode_xy(p, 8, anchors, "sigmoid")
    cells = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")[::-1]).float()
    assert ((xy / 8).floor() == cells).all()
    assert not ((decode_xy(p, 8, anchors, "linear") / 8).floor() == cells).all()


def test_heads_give_b7_depths() -> None:
    assert YoloV1Head(80, 2, width=4)(torch.zeros(1, 3, 448, 448)).shape == (1, 7, 7, 90)
    v3 = Detector((8, 16, 32), [torch.ones(3, 2)] * 3, 80, width=4)
    outs = v3(torch.zeros(1, 3, 416, 416))
    assert [o.shape[1] * o.shape[2] for o in outs] == [255, 255, 255]
    assert [o.shape[-1] for o in outs] == [52, 26, 13]


def test_a_few_steps_lower_the_loss_and_evaluation_counts_every_box() -> None:
    torch.manual_seed(0)
    d = render(32, seed=0)
    model = Detector((8,), [torch.tensor([[10.0, 10.0], [20.0, 20.0]])], 6, width=4)
    step, opt = yolo_step("sigmoid", "sigmoid"), torch.optim.Adam(model.parameters(), 1e-2)
    batch = next(iter(DetBatches(d, 32)))
    first = step(model, batch).loss.item()
    for _ in range(15):
        opt.zero_grad()
        step(model, batch).loss.backward()
        opt.step()
    assert step(model, batch).loss.item() < first
    ev = evaluate_detector(model, d, "sigmoid", "sigmoid", conf=0.3)
    assert ev["truth"] == sum(len(b) for b in d.boxes)
    assert sum(ev["objects_by_size"].values()) == ev["truth"]


def test_match_counts_duplicates() -> None:
    truth = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    pred = torch.tensor([[0.0, 0, 10, 10], [0.5, 0, 10, 10], [50, 50, 60, 60]])
    found, dup = match(pred, truth)
    assert found.tolist() == [0, -1] and dup == 1


def test_smoke_run(tmp_path) -> None:
    path = run_experiment(EXPERIMENTS.get("yolo"), scale="smoke", runs_root=tmp_path, verbose=False)
    s = json.loads((path / "summary.json").read_text())
    assert s["nms"]["identical"] == s["nms"]["trials"]
    assert s["heads"]["v1_depth"] == 90 and s["heads"]["v3_depth"] == 255
    assert set(s["regimes"]) == {"v2", "softmax-labels", "unconstrained-offsets", "multi-size", "v3-three-scales"}
    assert set(s["regimes"]["multi-size"]["eval"]) == {"32", "64"}
    figs = {p.name for p in (path / "figures").iterdir()}
    assert {"h3_data.png", "h3_priors.png", "h3_nms.png", "h3_curves.png"} <= figs
