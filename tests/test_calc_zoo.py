"""calc over the torchvision classification zoo: conv/linear/matmul/attention MACs equal torch's
FlopCounterMode on the eval graph and torchvision's published operation counts (`weights.meta["_ops"]`,
which torchvision calls GFLOPS but which count multiply-accumulates), at each weight's own crop size.

Models are built on the meta device (shapes only, nothing allocated, nothing downloaded: the weight
metadata ships with torchvision), so even vit_h_14 costs only its graph walk. RegNets' init cannot run on
the meta device; they are built on the CPU and moved there.
"""

import time
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchdojo.calc import analyze
from torchdojo.calc.format import WEIGHT_OPS

ZOO = torchvision.models.list_models(module=torchvision.models)

# Measured once (2026-12-01, the 2-core dev machine, torchvision 0.29): every other model builds in under
# 4 s on the CPU, and in under 0.5 s on the meta device the test uses.
EXCLUDED = {
    "regnet_y_128gf": "its random init fails on the meta device, and on the CPU it takes 5.2 s (645M parameters)",
}
COVERED = [name for name in ZOO if name not in EXCLUDED]


def build(name: str, **kwargs: object) -> nn.Module:
    """A randomly initialised model on the meta device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet/inception: the future-default init warning
        try:
            with torch.device("meta"):
                return torchvision.models.get_model(name, weights=None, **kwargs)
        except NotImplementedError:  # RegNet's init copies values out of a tensor
            return torchvision.models.get_model(name, weights=None, **kwargs).to("meta")


def weight_macs(model: nn.Module, size: int) -> int:
    a = analyze(model, (3, size, size))
    assert a.method == "fx graph" and a.mode == "eval" and not a.uncounted
    return sum(r.macs for r in a.layers if r.op in WEIGHT_OPS)


def flop_counter_macs(model: nn.Module, size: int) -> int:
    """FlopCounterMode's count of one eval forward, halved (it counts 2 FLOPs per multiply-accumulate).
    Gradients stay on so attention runs its plain matmul path, which the counter sees (its fused no-grad
    fast path is one opaque kernel)."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops() // 2


def published(name: str) -> list[tuple[str, int, int, float]]:
    """(weights, crop size, classes, published GMACs) for every weight entry that carries `_ops`."""
    out = []
    for w in torchvision.models.get_model_weights(name):
        if "_ops" in w.meta:
            crop = w.transforms.keywords.get("crop_size", 224)
            classes = len(w.meta["categories"]) if w.meta.get("categories") else 1000  # vgg16 FEATURES: None
            out.append((w.name, crop, classes, w.meta["_ops"]))
    return out


def test_zoo_coverage_is_explicit() -> None:
    assert set(EXCLUDED) <= set(ZOO)  # an exclusion names a real model, with a reason
    assert all(reason for reason in EXCLUDED.values())
    print(f"torchvision zoo: {len(ZOO)} classification models, {len(COVERED)} analysed, excluded: {EXCLUDED}")
    assert len(COVERED) == len(ZOO) - len(EXCLUDED) == 79


@pytest.mark.slow
@pytest.mark.parametrize("name", COVERED)
def test_zoo_model_matches_flop_counter_and_published_ops(name: str) -> None:
    start = time.perf_counter()
    counts = published(name)
    size = next((crop for _, crop, classes, _ in counts if classes == 1000), 224)  # the first crop size
    model = build(name, **({"image_size": size} if name.startswith("vit_") else {}))
    ours = weight_macs(model, size)
    assert ours == flop_counter_macs(model, size)
    for weights, crop, classes, gmacs in counts:
        if (crop, classes) == (size, 1000):
            macs = ours
        else:  # a fine-tuned head or another crop (EfficientNet-B7 at 600, SWAG ViTs at 384-518)
            extra = {"image_size": crop} if name.startswith("vit_") else {}
            macs = weight_macs(build(name, num_classes=classes, **extra), crop)
        assert round(macs / 1e9, 3) == pytest.approx(gmacs, abs=5e-4), (weights, crop, macs)
    took = time.perf_counter() - start
    print(
        f"{name}: {ours:,} MACs at {size} (FlopCounterMode agrees), {len(counts)} published counts agree, {took:.1f} s"
    )


def test_googlenet_and_inception_count_their_aux_heads_only_in_train_mode() -> None:
    # torchvision publishes 1.498 and 5.713 GMACs: the eval graph, without the auxiliary classifiers
    for name, size, gmacs, aux in (("googlenet", 224, 1.498, 8_400_000), ("inception_v3", 299, 5.713, 5_700_000)):
        model = build(name, aux_logits=True, init_weights=False)
        model.train()
        eval_macs = weight_macs(model, size)
        assert model.training and round(eval_macs / 1e9, 3) == gmacs
        a = analyze(model, (3, size, size), batch=2, train=True)
        assert a.mode == "train" and model.training
        train_macs = sum(r.macs for r in a.layers if r.op in WEIGHT_OPS) // 2
        assert train_macs - eval_macs == pytest.approx(aux, rel=0.05)  # +8.4 M and +5.7 M
        assert any(r.name.lower().startswith("aux") for r in a.layers)  # aux1.., AuxLogits..
