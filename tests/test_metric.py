"""torchdojo.metric: triplet sampling, miners, the triplet loss, collapse detection and separability probes."""

import math

import pytest
import torch
import torch.nn.functional as F

from torchdojo.data.base import ImageData
from torchdojo.errors import DojoError
from torchdojo.metric.collapse import CollapseDetector
from torchdojo.metric.featuremaps import capture, montage
from torchdojo.metric.losses import TripletObjective, centroid_logits, head_only_cross_entropy, triplet_margin_loss
from torchdojo.metric.miners import batch_hard, build_miner, pairwise_distances, semi_hard
from torchdojo.metric.model import MetricCNN, main_layers
from torchdojo.metric.probes import fisher_ratio, knn_accuracy, linear_probe_accuracy, mean_pairwise_distance
from torchdojo.metric.triplets import TripletBatches, TripletDataset, split_triplets


def _data(labels: list[int], classes: int = 3, hw: int = 4) -> ImageData:
    y = torch.tensor(labels)
    # each image carries its own index in pixel (0, 0, 0), so batches can be traced back to indices
    x = torch.zeros(len(y), 1, hw, hw, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(len(y), dtype=torch.uint8)
    return ImageData(x, y, [str(c) for c in range(classes)])


# uneven classes, one with exactly two members: its positives are forced
LABELS = [0] * 9 + [1] * 2 + [2] * 5 + [0, 2, 2, 0]


def test_triplet_dataset_positives_share_label_negatives_do_not_over_many_draws() -> None:
    data = _data(LABELS)
    ds = TripletDataset(data, seed=3, num_triplets=50)
    y = data.y
    seen_neg: set[int] = set()
    for epoch in range(200):
        a, p, n = ds.indices(epoch)
        assert len(a) == len(p) == len(n) == 50
        assert torch.equal(y[a], y[p]), "a positive must share the anchor's label"
        assert not (a == p).any(), "a positive must be another image"
        assert not (y[a] == y[n]).any(), "a negative must not share the anchor's label"
        seen_neg.update(n.tolist())
        two = torch.nonzero(y == 1).flatten()  # class 1 has exactly two images: each is the other's positive
        for anchor, pos in zip(a.tolist(), p.tolist(), strict=True):
            if anchor in two.tolist():
                assert pos == (two[1] if anchor == two[0] else two[0]).item()
    assert seen_neg == set(range(len(y))), "every image should serve as a negative for some anchor"


def test_triplet_dataset_is_seeded_and_items_are_images() -> None:
    data = _data(LABELS)
    a1 = TripletDataset(data, seed=1).indices(4)
    a2 = TripletDataset(data, seed=1).indices(4)
    b = TripletDataset(data, seed=1).indices(5)
    assert all(torch.equal(u, v) for u, v in zip(a1, a2, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a1, b, strict=True))
    ds = TripletDataset(data, seed=1).set_epoch(4)
    anchor, pos, neg = ds[2]
    assert [int(t[0, 0, 0]) for t in (anchor, pos, neg)] == [int(i[2]) for i in a1]
    assert len(list(ds)) == len(ds) == len(LABELS) // 3


def test_triplet_dataset_rejects_unusable_data() -> None:
    with pytest.raises(DojoError, match="two classes"):
        TripletDataset(_data([0, 0, 0], classes=1))
    with pytest.raises(DojoError, match="at least two images"):
        TripletDataset(_data([0, 0, 1, 2, 2]))


def test_triplet_batches_stack_anchor_positive_negative() -> None:
    data = _data(LABELS)
    ds = TripletDataset(data, seed=0, num_triplets=10)
    batches = TripletBatches(ds, 12, mean=(0.0,), std=(1 / 255,), seed=0)  # x = raw pixel values
    assert len(batches) == 3  # 4 triplets per batch
    got = []
    for x, y in batches:
        assert x.shape[0] == y.shape[0] and x.shape[0] % 3 == 0
        ya, yp, yn = split_triplets(y)
        assert torch.equal(ya, yp) and not (ya == yn).any()
        got.append(x[:, 0, 0, 0].round().long())
    a, p, n = ds.indices(0)
    idx = torch.cat(got)
    assert sorted(idx.tolist()) == sorted(torch.cat([a, p, n]).tolist())


# A hand-made batch on the unit circle (angles in degrees): class 0 at 0, 30, 100; class 1 at 45, 180, 300.
ANGLES = [0, 30, 100, 45, 180, 300]
HAND_LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


def _circle() -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in ANGLES])


def test_pairwise_distances_are_chords() -> None:
    d = pairwise_distances(_circle() * 3.0)  # scale must not matter: embeddings are normalised
    for i, ai in enumerate(ANGLES):
        for j, aj in enumerate(ANGLES):
            assert d[i, j].item() == pytest.approx(2 * math.sin(math.radians(abs(ai - aj)) / 2), abs=1e-5)


def test_batch_hard_on_hand_made_batch() -> None:
    a, p, n = batch_hard(_circle(), HAND_LABELS)
    # e.g. anchor 0 (0 deg): farthest positive is 100 deg (index 2), nearest negative 45 deg (index 3)
    assert a.tolist() == [0, 1, 2, 3, 4, 5]
    assert p.tolist() == [2, 2, 0, 4, 3, 4]
    assert n.tolist() == [3, 3, 3, 1, 2, 0]


def test_batch_hard_skips_anchors_without_positive() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # index 5 is alone in its class
    a, _, _ = batch_hard(_circle(), labels)
    assert 5 not in a.tolist()


def test_semi_hard_on_hand_made_batch() -> None:
    a, p, n = semi_hard(_circle(), HAND_LABELS, margin=0.3)
    got = sorted(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    # 0 < d(a,n) - d(a,p) <= 0.3, e.g. (0, 1, 3): d = 0.518 vs 0.765
    assert got == [(0, 1, 3), (1, 2, 5), (2, 1, 4), (4, 3, 0), (4, 3, 1), (4, 5, 0), (4, 5, 1), (5, 4, 2)]


@pytest.mark.parametrize("kind", ["batch-hard", "semi-hard"])
def test_miners_match_pytorch_metric_learning(kind: str) -> None:
    pytest.importorskip("pytorch_metric_learning")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        emb = torch.randn(40, 8, generator=g)
        labels = torch.randint(0, 3, (40,), generator=g)
        ours = build_miner(kind, 0.2, "torchdojo")(emb, labels)
        ref = build_miner(kind, 0.2, "pml")(emb, labels)
        assert sorted(zip(*[t.tolist() for t in ours], strict=True)) == sorted(
            zip(*[t.tolist() for t in ref], strict=True)
        )


def test_build_miner_rejects_unknown() -> None:
    assert build_miner("none", 0.2) is None
    with pytest.raises(DojoError, match="unknown miner"):
        build_miner("hardest", 0.2)


def test_triplet_loss_matches_torch_on_normalised_embeddings() -> None:
    g = torch.Generator().manual_seed(1)
    a, p, n = (torch.randn(16, 5, generator=g, requires_grad=True) for _ in range(3))
    ours = triplet_margin_loss(a, p, n, margin=0.3)
    ref = F.triplet_margin_loss(*(F.normalize(t, dim=1) for t in (a, p, n)), margin=0.3, eps=0.0)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad(ours, a)[0]
    gr = torch.autograd.grad(ref, a)[0]
    torch.testing.assert_close(ga, gr, atol=1e-5, rtol=1e-4)
    empty = torch.zeros(0, 5, requires_grad=True)
    assert triplet_margin_loss(empty, empty, empty, 0.3).item() == 0.0


def test_triplet_objective_parts_and_logits() -> None:
    torch.manual_seed(0)
    model = MetricCNN((1, 8, 8), 2, channels=(4,), embedding_dim=6)
    x, y = torch.randn(12, 1, 8, 8), torch.tensor([0, 1, 0, 1] * 3)
    y[4:8] = y[:4]  # positives share the anchors' labels
    y[8:] = 1 - y[:4]
    loss, logits = TripletObjective(0.2)(model, x, y)
    assert loss.ndim == 0 and logits.shape == (12, 2) and not logits.requires_grad  # centroid vote only
    obj = TripletObjective(0.2, build_miner("batch-hard", 0.2), ce_weight=0.5)
    loss, logits = obj(model, x, y)
    assert logits.shape == (12, 2)
    stats = obj.pop_stats()
    assert loss.item() == pytest.approx(stats["triplet"] + 0.5 * stats["ce"], rel=1e-5)
    assert stats["triplets"] == 12 and obj.pop_stats() == {}


def test_centroid_logits_leave_one_out_by_hand() -> None:
    # class 0 at 0 and 90 degrees, class 1 at 180 degrees and at 10 degrees (an outlier near class 0)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [math.cos(0.1745), math.sin(0.1745)]])
    y = torch.tensor([0, 0, 1, 1])
    logits = centroid_logits(emb * 5, y)
    # sample 0: own centroid (without itself) is sample 1 (cos 0); class 1's centroid is the mean of
    # 180 and 10 degrees, which points at 95 degrees (cos 95 = -0.087)
    assert logits[0, 0].item() == pytest.approx(0.0, abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(math.cos(math.radians(95)), abs=1e-3)
    # sample 1 (90 deg) is nearer class 1's centroid (95 deg) than its own (0 deg); 2 and 3 see each other
    # as their own class (170 deg apart) and class 0's centroid (45 deg) closer
    assert logits.argmax(1).tolist() == [0, 1, 0, 0]
    alone = centroid_logits(emb[:3], torch.tensor([0, 0, 1]))
    assert alone[2, 1].item() == -2.0  # no other member of its class in the batch


def test_head_only_cross_entropy_leaves_features_untouched() -> None:
    torch.manual_seed(0)
    model = MetricCNN((1, 8, 8), 2, channels=(4,), embedding_dim=6).train()
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    loss, _ = head_only_cross_entropy(model, torch.randn(10, 1, 8, 8) * 3 + 1, torch.randint(0, 2, (10,)))
    loss.backward()
    assert all(p.grad is None for p in model.features.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    for k, v in model.features.state_dict().items():  # BN running stats too
        assert torch.equal(v, before[k]), k


def test_collapse_detector_spread() -> None:
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(200, 16, generator=g)
    collapsed = torch.ones(200, 16) + 1e-3 * torch.randn(200, 16, generator=g)
    assert mean_pairwise_distance(healthy) == pytest.approx(math.sqrt(2), abs=0.05)
    assert mean_pairwise_distance(collapsed) < 0.01
    det = CollapseDetector(margin=0.2)
    det.update(mean_pairwise_distance(healthy))
    assert det.warnings() == []
    det.update(mean_pairwise_distance(collapsed))
    assert len(det.warnings()) == 1 and "collapsed" in det.warnings()[0]


def test_collapse_detector_loss_stuck_at_margin() -> None:
    det = CollapseDetector(margin=0.2, patience=3)
    for loss in (0.35, 0.2003, 0.1999, 0.2001):
        det.update(1.2, loss)
    assert det.stuck_at_margin() and any("stuck at the margin" in w for w in det.warnings())
    falling = CollapseDetector(margin=0.2, patience=3)
    for loss in (0.2, 0.2, 0.15, 0.1):
        falling.update(1.2, loss)
    assert not falling.stuck_at_margin() and falling.warnings() == []


def test_a_constant_network_is_flagged_as_collapsed() -> None:
    model = MetricCNN((1, 8, 8), 2, channels=(4,), embedding_dim=6)
    with torch.no_grad():
        model.features[-1].weight.zero_()  # the embedding no longer depends on the input
    emb = model.eval().features(torch.randn(64, 1, 8, 8))
    det = CollapseDetector(margin=0.2)
    det.update(mean_pairwise_distance(emb))
    assert det.collapsed_spread()


def test_fisher_ratio_and_probes_separate_from_not() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    noise = torch.randn(400, 6, generator=g)
    shifted = noise + 3.0 * y[:, None].float() * torch.tensor([1.0, 0, 0, 0, 0, 0])
    assert fisher_ratio(noise, y) < 0.05
    assert fisher_ratio(shifted, y) > 1.5
    mix = torch.randn(6, 6, generator=g)  # invariant to an invertible linear map
    assert fisher_ratio(shifted @ mix, y, shrink=1e-9) == pytest.approx(fisher_ratio(shifted, y, shrink=1e-9), rel=1e-4)
    assert fisher_ratio(torch.zeros(400, 6), y) == 0.0
    tr, te = slice(0, 200), slice(200, 400)
    assert linear_probe_accuracy(shifted[tr], y[tr], shifted[te], y[te]) > 0.9
    assert 0.3 < linear_probe_accuracy(noise[tr], y[tr], noise[te], y[te]) < 0.7
    assert knn_accuracy(shifted[tr], y[tr], shifted[te], y[te], k=5) > 0.85


def test_feature_maps_capture_and_montage() -> None:
    model = MetricCNN((1, 8, 8), 2, channels=(4, 6), embedding_dim=6)
    layers = main_layers(model)
    assert list(layers) == ["block1", "block2"]
    maps = capture(model, torch.randn(3, 1, 8, 8), layers, channels=3)
    assert maps["block1"].shape == (3, 3, 8, 8) and maps["block2"].shape == (3, 3, 4, 4)
    inputs = torch.randint(0, 255, (3, 1, 8, 8), dtype=torch.uint8)
    img = montage({0: maps, 2: maps}, inputs, "block2", pad=2)
    assert img.shape == (2 * 3 * 10 + 2, 4 * 10 + 2, 3)
    assert img.min() >= 0 and img.max() <= 1
    cell = img[2:10, 12:20, 0]  # first row, channel 0: normalised on its own
    assert cell.max().item() == pytest.approx(1.0) or cell.max().item() == 0.0


def test_centroid_logits_are_fp32_under_bf16_autocast():
    from torchdojo.metric.losses import centroid_logits

    torch.manual_seed(0)
    emb, y = torch.randn(12, 8), torch.tensor([0, 1, 2] * 4)
    plain = centroid_logits(emb, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the engine runs under on CUDA
        auto = centroid_logits(emb, y)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain)
