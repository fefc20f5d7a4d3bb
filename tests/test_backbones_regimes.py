"""Regimes: a frozen backbone is bit-identical after training (weights and BN statistics) and the optimizer
sees only the head; fine-tuning uses a lower trunk LR and unfreezes from the top; scratch is random init."""

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from torchdojo.backbones import build_classifier, load_backbone, trainable_params, unfreeze_top
from torchdojo.backbones.classifier import trunk_state
from torchdojo.config import TrainConfig
from torchdojo.data import ImageData
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import fit


def _batches(n: int = 32, size: int = 32, seed: int = 0) -> TensorBatches:
    g = torch.Generator().manual_seed(seed)
    data = ImageData(
        torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
        torch.randint(0, 3, (n,), generator=g),
        ["a", "b", "c"],
    )
    return TensorBatches(data, 16, (0.5,) * 3, (0.25,) * 3, shuffle=True)


def test_frozen_backbone_is_bit_identical_after_training():
    model = build_classifier("efficientnet_lite0", 3, regime="frozen", head="mlp", hidden=(32,))
    before = trunk_state(model)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    params = trainable_params(model)
    assert {id(p) for p in params} == {id(p) for p in model.head.parameters()}  # optimizer: head only
    assert not any(p.requires_grad for p in model.features.parameters())
    model.train()
    assert all(not m.training for m in model.features.modules())  # BN (and dropout) in eval mode
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2)
    fit(model, _batches(), None, cfg, device=torch.device("cpu"), params=params, verbose=False)
    after = model.features.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # includes running_mean / running_var / num_batches_tracked
    assert any(not torch.equal(model.head.state_dict()[k], v) for k, v in head_before.items())  # the head learned


def test_unfrozen_bn_would_move():
    """The control for the test above: the same training with the trunk trainable changes BN statistics."""
    model = build_classifier("efficientnet_lite0", 3, regime="finetune", head="linear", bn_eval=False)
    before = trunk_state(model)
    fit(
        model,
        _batches(),
        None,
        TrainConfig(epochs=1, batch_size=16, lr=1e-3),
        device=torch.device("cpu"),
        verbose=False,
    )
    after = model.features.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items() if "running_mean" in k)


def test_finetune_bn_eval_keeps_statistics_but_trains_weights():
    model = build_classifier("efficientnet_lite0", 3, regime="finetune", head="linear")  # bn_eval=True default
    before = trunk_state(model)
    fit(
        model,
        _batches(),
        None,
        TrainConfig(epochs=1, batch_size=16, lr=1e-3),
        device=torch.device("cpu"),
        verbose=False,
    )
    after = model.features.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if "running_" in k)
    assert not torch.equal(after["stem.1.weight"], before["stem.1.weight"])  # BN scale still learns
    assert not torch.equal(after["stem.0.weight"], before["stem.0.weight"])


def test_finetune_groups_and_gradual_unfreezing():
    model = build_classifier("efficientnet_lite0", 5, regime="finetune", head="linear", bn_eval=False)
    groups = trainable_params(model, backbone_lr_mult=0.1, lr=1e-3)
    assert isinstance(groups, list) and "lr" not in groups[0] and groups[1]["lr"] == 1e-4  # head first, at lr
    assert len(groups[1]["params"]) == len(list(model.features.parameters()))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.head.parameters()}
    n = unfreeze_top(model, 0.5)
    trainable = [p.requires_grad for p in model.features.parameters()]
    assert 0 < n and any(trainable) and not all(trainable) and trainable[-1] and not trainable[0]
    model.train()
    frozen_bn = [m for m in model.features.modules() if isinstance(m, _BatchNorm) and not m.weight.requires_grad]
    live_bn = [m for m in model.features.modules() if isinstance(m, _BatchNorm) and m.weight.requires_grad]
    assert frozen_bn and live_bn
    assert not any(m.training for m in frozen_bn) and all(m.training for m in live_bn)
    unfreeze_top(model, 1.0)
    assert all(p.requires_grad for p in model.features.parameters())


def test_scratch_is_random_init():
    pretrained = load_backbone("efficientnet_lite0")
    torch.manual_seed(0)
    scratch = build_classifier("efficientnet_lite0", 4, regime="scratch")
    a = pretrained.features.state_dict()
    b = scratch.features.state_dict()
    assert not scratch.pretrained and all(p.requires_grad for p in scratch.parameters())
    assert not torch.equal(a["stem.0.weight"], b["stem.0.weight"])
    bns = [m for m in scratch.features.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(m.momentum == 0.1 for m in bns)  # running stats that keep up with a short run
