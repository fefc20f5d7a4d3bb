"""H2: the U-Net with and without skips, the cluttered-scene task, elastic deformation of image and mask
together, IoU/Dice, and the experiment at smoke scale."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo.data import ImageData
from torchdojo.data.segmentation import SegBatches, elastic, make_scenes
from torchdojo.errors import DojoError
from torchdojo.experiments import unet
from torchdojo.experiments.base import build_config, run_experiment
from torchdojo.models.unet import UNet


@pytest.mark.parametrize("skips", [True, False])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_keeps_the_size_and_skips_feed_the_decoder(skips: bool, depth: int) -> None:
    model = UNet(1, 2, base=4, depth=depth, skips=skips)
    x = torch.randn(2, 1, 16, 24)
    assert model(x).shape == (2, 2, 16, 24)
    first_dec = model.dec[0][0]
    deepest = 4 * 2 ** (depth - 1)
    assert first_dec.in_channels == deepest * (2 if skips else 1)


def test_without_skips_the_output_does_not_see_fine_detail_directly() -> None:
    """With skips, a change to one input pixel reaches the output through the full-resolution path: the
    gradient of the output at that pixel w.r.t. the input at that pixel is larger than without skips."""
    torch.manual_seed(0)
    ratio = {}
    for skips in (True, False):
        model = UNet(1, 1, base=4, depth=3, skips=skips).eval()
        x = torch.randn(1, 1, 32, 32, requires_grad=True)
        model(x)[0, 0, 16, 16].backward()
        g = x.grad[0, 0].abs()
        ratio[skips] = (g[16, 16] / g.mean()).item()
    assert ratio[True] > ratio[False]


def test_unet_size_check_is_a_clear_error() -> None:
    with pytest.raises(DojoError, match="divisible by 8"):
        UNet(depth=3).check_size(28, 28)
    with pytest.raises(DojoError, match="divisible by 4"):
        UNet(depth=2).check_size(32, 30)


def _items(n: int = 12) -> ImageData:
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 6:22, 8:20] = 200  # a bright rectangle, with a darker band that is still foreground
    x[:, :, 12:14, 8:20] = 60
    return ImageData(x, torch.arange(n) % 10, [str(i) for i in range(10)])


def test_scenes_put_the_item_and_its_mask_on_clutter() -> None:
    scenes = make_scenes(_items(), canvas=32, seed=0, clutter=0.5, noise=0.0, threshold=0.1)
    assert scenes.x.shape == (12, 2, 32, 32) and scenes.x.dtype == torch.uint8
    scene, mask = scenes.x[:, 0].float() / 255, scenes.x[:, 1]
    assert set(mask.unique().tolist()) == {0, 255}
    assert ((mask > 0).sum((1, 2)) == 16 * 12).all()  # the whole item, placed once
    assert torch.allclose(scene[mask > 0].unique(), torch.tensor([60 / 255, 200 / 255]), atol=1 / 255)
    bg = scene[mask == 0]
    assert bg.max() <= 0.5 + 1 / 255 and bg.max() > 60 / 255  # clutter brighter than the item's dark band
    assert not torch.equal(make_scenes(_items(), 32, seed=1).x, scenes.x)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), alpha=st.floats(5, 60), sigma=st.floats(2, 5))
def test_elastic_moves_image_and_mask_together(seed: int, alpha: float, sigma: float) -> None:
    scenes = make_scenes(_items(4), canvas=32, seed=seed, noise=0.0, clutter=0.0)  # item on black
    out = elastic(alpha, sigma)(scenes.x, torch.Generator().manual_seed(seed))
    assert out.dtype == torch.uint8 and out.shape == scenes.x.shape
    assert set(out[:, 1].unique().tolist()) <= {0, 255}  # the mask stays binary (nearest neighbour)
    img, mask = out[:, 0].float(), out[:, 1] > 0
    # the deformed item is where the deformed mask is: bright pixels inside, none far outside
    assert (img[mask] > 20).float().mean() > 0.95
    assert (img[~mask] > 100).float().mean() < 0.02
    again = elastic(alpha, sigma)(scenes.x, torch.Generator().manual_seed(seed))
    assert torch.equal(out, again)  # seeded by the batch generator


def test_seg_batches_split_scene_and_mask_and_repeat() -> None:
    scenes = make_scenes(_items(6), canvas=32, seed=0)
    b = SegBatches(scenes, 4, 0.2, 0.3, shuffle=True, repeats=3, seed=1).set_epoch(1)
    assert len(b) == 5  # 18 draws in batches of 4
    n = 0
    for x, m in b:
        assert x.shape[1] == 1 and m.shape[1] == 1 and set(m.unique().tolist()) <= {0.0, 1.0}
        n += len(x)
    assert n == 18


def test_iou_and_dice_on_known_masks() -> None:
    mask = torch.zeros(3, 1, 4, 4)
    mask[0, 0, :2] = 1  # 8 pixels
    mask[1, 0, 0, 0] = 1
    logits = torch.full((3, 1, 4, 4), -1.0)
    logits[0, 0, :1] = 1  # 4 of the 8, nothing else
    logits[1, 0, 3, 3] = 1  # one wrong pixel
    m = unet.seg_metrics(logits, mask)
    assert torch.allclose(m["iou"], torch.tensor([0.5, 0.0, 1.0]))  # the third: both empty
    assert torch.allclose(m["dice"], torch.tensor([2 * 4 / 12, 0.0, 1.0]))
    assert torch.allclose(m["acc"], torch.tensor([12 / 16, 14 / 16, 1.0]))


def test_experiment_smoke_reports_the_2x2(tmp_path) -> None:  # noqa: ANN001
    path = run_experiment(unet, scale="smoke", device="cpu", runs_root=tmp_path, verbose=False)
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary["regimes"]) == set(unet.REGIMES)
    assert summary["regimes"]["skips"]["params"] > summary["regimes"]["no-skips"]["params"]
    report = json.loads((path / "report.json").read_text())
    figs = {b["path"] for b in report["blocks"] if b["type"] == "figure"}
    assert figs == {"deformation.png", "curves.png", "predictions.png"}
    assert all((path / "figures" / f).is_file() for f in figs)
    two_by_two = next(b for b in report["blocks"] if b["type"] == "table" and b["caption"] == "mean test IoU, 2x2")
    assert two_by_two["columns"] == ["", "elastic", "no elastic"] and len(two_by_two["rows"]) == 2
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert {"train_iou", "val_iou", "val_dice"} <= set(rows[0])
    assert any(b["type"] == "heading" and b["text"] == "Question and answer" for b in report["blocks"])


@pytest.mark.parametrize("bad", ["regimes=skips,bogus", "train_images=0", "clutter=1.5", "train.label_smoothing=0.1"])
def test_bad_settings_are_refused(bad: str) -> None:
    with pytest.raises(DojoError):
        build_config(unet, "smoke", overrides=[bad])
