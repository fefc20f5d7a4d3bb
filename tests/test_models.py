"""Every registered model: forward and backward on a small input, the shared Classifier interface,
and `reset_head`. Generated from the MODELS registry, so new models are tested when registered."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchdojo.errors import DojoError
from torchdojo.models import MODELS, Classifier, build_model
from torchdojo.models.ladder import BaselineModel, pool_relu

IN_SHAPE = (3, 32, 32)


def _build(name: str, in_shape: tuple[int, int, int] = IN_SHAPE, k: int = 5) -> Classifier:
    torch.manual_seed(0)
    try:
        return build_model(name, in_shape, k)
    except DojoError as e:  # e.g. pretrained weights that are not on this machine
        pytest.skip(f"{name} cannot be built here: {e.problem}")


@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward(name):
    model = _build(name)
    assert isinstance(model, Classifier)
    model.train()
    x = torch.randn(4, *IN_SHAPE)
    out = model(x)
    assert out.shape == (4, 5) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 4])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert p.grad is not None, f"{name}: no gradient reaches {n}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {n}"
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)


@pytest.mark.parametrize("name", MODELS.names())
def test_features_then_head_interface(name):
    model = _build(name).eval()
    x = torch.randn(2, *IN_SHAPE)
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (2, model.num_features)
        assert torch.allclose(model.head(f), model(x), atol=1e-5)
    assert model.num_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS.names())
def test_reset_head(name):
    model = _build(name).eval()
    x = torch.randn(2, *IN_SHAPE)
    with torch.no_grad():
        before = model.features(x)
    feature_ids = {id(p) for p in model.features.parameters()}
    model.reset_head(7)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        assert torch.equal(model.features(x), before)  # the backbone is untouched
    head_params = list(model.head.parameters())
    assert head_params and all(id(p) not in feature_ids for p in head_params)
    last = model.head[-1] if isinstance(model.head, nn.Sequential) else model.head
    assert isinstance(last, nn.Linear) and last.out_features == 7 and last.in_features == model.num_features


def test_reset_head_rejects_a_non_linear_head():
    model = build_model("logreg", (1, 8, 8), 3)
    model.head = nn.Sequential(nn.Identity())
    with pytest.raises(TypeError, match="nn.Linear"):
        model.reset_head(2)


def test_num_params_trainable_only():
    model = build_model("cnn", (1, 28, 28), 10)
    for p in model.features.parameters():
        p.requires_grad_(False)
    head = sum(p.numel() for p in model.head.parameters())
    assert model.num_params(trainable_only=True) == head < model.num_params()


def test_grayscale_input_for_the_ladder_models():
    for name in ("logreg", "mlp", "cnn", "baseline", "improved-cnn", "textbook-cnn", "small-resnet"):
        model = build_model(name, (1, 28, 28), 10).eval()
        assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10), name


def test_baseline_model_is_exactly_c4():
    """C4's BaselineModel: conv 3->32 k5, ReLU, max-pool 2, flatten, FC 32*14*14 -> 10, nothing else."""
    m = BaselineModel((3, 32, 32), 10)
    layers = list(m.features) + list(m.head)
    assert [type(layer) for layer in layers] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear]
    conv, fc = layers[0], layers[-1]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        3,
        32,
        (5, 5),
        (1, 1),
        (0, 0),
    )
    assert layers[2].kernel_size == 2
    assert (fc.in_features, fc.out_features) == (32 * 14 * 14, 10)
    assert m.num_params() == (3 * 25 * 32 + 32) + (32 * 14 * 14 * 10 + 10)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_improved_cnn_limits():
    with pytest.raises(ValueError, match="at most 4 conv"):
        build_model("improved-cnn", (3, 32, 32), 10, channels=(8, 8, 8, 8, 8))
    m = build_model("improved-cnn", (3, 32, 32), 10, batch_norm=True, dropout=0.3)
    kinds = {type(layer) for layer in m.features}
    assert nn.BatchNorm2d in kinds and nn.Dropout in kinds
    assert sum(isinstance(layer, nn.Conv2d) for layer in m.features) <= 4
    assert sum(isinstance(layer, nn.Linear) for layer in m.modules()) <= 3


def _textbook_order() -> nn.Sequential:
    """benchmarks/textbook_fashion_mnist.py's model as written there: ReLU, then max-pool."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(128, 10),
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_textbook_cnn_equals_the_textbook_model_in_outputs_and_gradients(channels_last):
    ours = _build("textbook-cnn", (1, 28, 28), 10)
    ref = _textbook_order()
    ref.load_state_dict(dict(zip(ref.state_dict(), ours.state_dict().values(), strict=True)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours, ref = ours.to(memory_format=fmt), ref.to(memory_format=fmt)
    x = torch.randn(16, 1, 28, 28, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    outs = []
    for net in (ours, ref):
        x.grad = None
        torch.manual_seed(3)  # the same dropout mask
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        outs.append((loss.detach(), x.grad.clone(), [p.grad.clone() for p in net.parameters()]))
    (la, xa, ga), (lb, xb, gb) = outs
    assert torch.equal(la, lb) and torch.equal(xa, xb)
    assert all(torch.equal(a, b) for a, b in zip(ga, gb, strict=True))
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # BN running statistics too


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(2, 9), st.integers(2, 9), st.integers(0, 2**31 - 1))
def test_pool_then_relu_is_relu_then_pool_with_ties(n, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, c, h, w), generator=g).float()  # small integers: many ties and zeros
    grad = torch.randn(n, c, h // 2, w // 2, generator=g)
    results = []
    for layers in (pool_relu(), [nn.ReLU(), nn.MaxPool2d(2)]):
        xi = x.clone().requires_grad_(True)
        out = nn.Sequential(*layers)(xi * 1)  # `* 1`: the in-place ReLU must not touch a leaf
        out.backward(grad)
        results.append((out.detach(), xi.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
