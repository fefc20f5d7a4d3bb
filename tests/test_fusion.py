"""The CPU fusion of BatchNorm2d -> ReLU -> MaxPool2d(2): the same function and gradients as the modules."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchdojo import fusion, kernels
from torchdojo.config import TrainConfig
from torchdojo.engine import cross_entropy, evaluate, train_one_epoch
from torchdojo.fusion import BatchNormReLUPool2d, StemConvBatchNormReLUPool2d, fused_bn_relu_pool
from torchdojo.metric.model import MetricCNN
from torchdojo.models import build_model
from torchdojo.optim import build_optimizer


def _block(c: int, relu_first: bool, **bn_kwargs) -> nn.Sequential:
    bn = nn.BatchNorm2d(c, **bn_kwargs)
    if bn.weight is not None:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1, 1)
    tail = [nn.ReLU(), nn.MaxPool2d(2)] if relu_first else [nn.MaxPool2d(2), nn.ReLU()]
    return nn.Sequential(bn, *tail)


def _run(block: nn.Sequential, x: torch.Tensor, grad: torch.Tensor, fuse: bool):
    xi = x.clone().requires_grad_(True)
    with fused_bn_relu_pool(block, enabled=fuse) as n:
        assert n == (1 if fuse else 0)
        out = block(xi)
    out.backward(grad)
    bn = block[0]
    grads = [p.grad.clone() for p in bn.parameters()]
    return out.detach(), xi.grad, grads, [b.clone() for b in bn.buffers()]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    return torch.allclose(a, b, rtol=rtol, atol=rtol * max(a.abs().max().item(), 1e-6))


@pytest.fixture(params=["c-kernel", "torch-ops"])
def impl(request, monkeypatch):
    """Both implementations of the fused op: the compiled C kernels and the PyTorch-ops fallback."""
    if request.param == "torch-ops":
        monkeypatch.setattr(fusion.kernels, "load", lambda: None)
    elif kernels.load() is None:
        pytest.skip("no C compiler: the kernels cannot be built here")
    return request.param


@pytest.mark.parametrize("relu_first", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size", [(8, 10), (7, 9)])  # odd sizes: the last row/column is pooled away
@pytest.mark.parametrize("bn_kwargs", [{}, {"affine": False}, {"momentum": None}])
def test_fused_training_step_matches_the_modules(impl, relu_first, channels_last, size, bn_kwargs):
    torch.manual_seed(0)
    ref = _block(5, relu_first, **bn_kwargs)
    fused = copy.deepcopy(ref)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(6, 5, *size) * 3 + 1).contiguous(memory_format=fmt)
    grad = torch.randn(6, 5, size[0] // 2, size[1] // 2)
    for _ in range(2):  # twice: running statistics and num_batches_tracked accumulate the same way
        out_r, dx_r, g_r, buf_r = _run(ref, x, grad, fuse=False)
        out_f, dx_f, g_f, buf_f = _run(fused, x, grad, fuse=True)
    assert _close(out_f, out_r, 1e-5)
    assert _close(dx_f, dx_r)
    assert len(g_f) == len(g_r) and all(_close(a, b) for a, b in zip(g_f, g_r, strict=True))
    assert all(_close(a.float(), b.float(), 1e-5) for a, b in zip(buf_f, buf_r, strict=True))
    assert isinstance(fused[1], nn.ReLU | nn.MaxPool2d) and type(fused[0]) is nn.BatchNorm2d  # restored


@pytest.mark.parametrize("c,size", [(32, (12, 12)), (64, (6, 7)), (48, (5, 9))])  # whole and partial vectors
def test_wide_layers_with_a_large_mean_keep_the_variance(impl, c, size):
    """Channels far from zero (mean 200, std 0.5): the statistics must not cancel away the variance."""
    torch.manual_seed(2)
    ref = _block(c, relu_first=False)
    fused = copy.deepcopy(ref)
    x = (torch.randn(4, c, *size) * 0.5 + 200 + torch.arange(c).view(1, c, 1, 1)).contiguous(
        memory_format=torch.channels_last
    )
    grad = torch.randn(4, c, size[0] // 2, size[1] // 2)
    out_r, dx_r, g_r, buf_r = _run(ref, x, grad, fuse=False)
    out_f, dx_f, g_f, buf_f = _run(fused, x, grad, fuse=True)
    assert _close(buf_f[1], buf_r[1], 1e-4)  # running_var
    assert _close(out_f, out_r, 1e-3)
    assert _close(dx_f, dx_r, 1e-3)
    assert all(_close(a, b, 1e-3) for a, b in zip(g_f, g_r, strict=True))


@pytest.mark.parametrize("relu_first", [True, False])
def test_fused_eval_output_is_exactly_the_modules(relu_first):
    torch.manual_seed(1)
    ref = _block(4, relu_first)
    ref[0].running_mean.uniform_(-1, 1)
    ref[0].running_var.uniform_(0.5, 2)
    ref.eval()
    x = torch.randn(3, 4, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = ref(x)
        with fused_bn_relu_pool(ref) as n:
            got = ref(x)
    assert n == 1 and torch.equal(got, expected)  # a positive affine map commutes with max exactly
    assert not ref.training and not ref[0].training


def test_a_negative_scale_runs_the_modules_unfused():
    torch.manual_seed(2)
    ref = _block(4, relu_first=True)
    with torch.no_grad():
        ref[0].weight[1] = -0.5  # max-pool no longer commutes with this channel's scale
    fused = copy.deepcopy(ref)
    x = torch.randn(4, 4, 8, 8)
    grad = torch.randn(4, 4, 4, 4)
    out_r, dx_r, g_r, _ = _run(ref, x, grad, fuse=False)
    out_f, dx_f, g_f, _ = _run(fused, x, grad, fuse=True)
    assert torch.equal(out_r, out_f) and torch.equal(dx_r, dx_f)
    assert all(torch.equal(a, b) for a, b in zip(g_r, g_f, strict=True))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(1, 3), st.integers(2, 7), st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_fused_gradients_match_with_ties(n, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, c, h, w), generator=g).float()  # small integers: many ties within windows
    x = x.contiguous(memory_format=torch.channels_last)  # the C kernels' layout
    grad = torch.randn(n, c, h // 2, w // 2, generator=g)
    ref = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2))
    with torch.no_grad():
        ref[0].weight.copy_(torch.rand(c, generator=g) + 0.1)
        ref[0].bias.copy_(torch.randn(c, generator=g))
    fused = copy.deepcopy(ref)
    out_r, dx_r, g_r, _ = _run(ref, x, grad, fuse=False)
    out_f, dx_f, g_f, _ = _run(fused, x, grad, fuse=True)
    assert _close(out_f, out_r, 1e-5) and _close(dx_f, dx_r, 1e-3)
    assert all(_close(a, b, 1e-3) for a, b in zip(g_f, g_r, strict=True))


def test_fusion_finds_the_ladder_blocks_and_keeps_state_dict_keys():
    model = build_model("textbook-cnn", (1, 28, 28), 10)
    keys = list(model.state_dict())
    modules = list(model.modules())
    with fused_bn_relu_pool(model) as n:
        assert n == 2
        assert sum(isinstance(m, BatchNormReLUPool2d) for m in model.modules()) == 2
        assert list(model.state_dict()) == keys
        assert [type(m) for m in model.modules()].count(StemConvBatchNormReLUPool2d) == 1  # the first conv's block
        assert len(list(model.parameters())) == len(keys) - 6  # the conv stays visible (clipping, optimizers)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert list(model.modules()) == modules  # the very same module objects are back
    with fused_bn_relu_pool(MetricCNN((1, 28, 28), 10)) as n:
        assert n == 3  # Conv -> BN -> ReLU -> MaxPool blocks


def _stem(cin: int, k: int, pad: int, bias: bool, relu_first: bool, affine: bool = True) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(cin, 24, k, padding=pad, bias=bias), *_block(24, relu_first, affine=affine))


def _stem_step(model: nn.Sequential, u: torch.Tensor, grad: torch.Tensor, fuse: bool):
    with fused_bn_relu_pool(model, enabled=fuse):
        out = model(u)
    out.backward(grad)
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "cin,k,pad,size", [(1, 3, 1, (28, 28)), (3, 3, 1, (9, 11)), (2, 5, 2, (7, 8)), (1, 3, 0, (10, 9))]
)
@pytest.mark.parametrize("bias,relu_first,affine", [(True, False, True), (False, True, True), (True, True, False)])
def test_stem_conv_block_matches_the_modules(cin, k, pad, size, bias, relu_first, affine):
    """First conv + BN + ReLU + pool, trained without dx: output, every gradient and the running statistics."""
    if kernels.load() is None:
        pytest.skip("no C compiler: the kernels cannot be built here")
    ref = _stem(cin, k, pad, bias, relu_first, affine).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(ref)
    torch.manual_seed(4)
    u = (torch.randn(6, cin, *size) * 2 + 1).contiguous(memory_format=torch.channels_last)  # mean far from 0
    out_size = [(s + 2 * pad - k + 1) // 2 for s in size]
    for _ in range(2):  # running statistics accumulate the same way
        out_r, g_r = _stem_step(ref, u, grad := torch.randn(6, 24, *out_size), fuse=False)
        ref.zero_grad()
        out_f, g_f = _stem_step(fused, u, grad, fuse=True)
        fused.zero_grad()
    out_r, g_r = _stem_step(ref, u, grad, fuse=False)
    with fused_bn_relu_pool(fused):
        assert type(fused[1]) is StemConvBatchNormReLUPool2d
    out_f, g_f = _stem_step(fused, u, grad, fuse=True)
    assert _close(out_f, out_r, 1e-5)
    assert g_f.keys() == g_r.keys()
    scale = g_r["0.weight"].abs().max().item()
    for name in g_r:
        if name == "0.bias":  # BN cancels it: zero up to rounding, in both
            assert g_f[name].abs().max() < 1e-4 * scale and g_r[name].abs().max() < 1e-4 * scale
        else:
            assert _close(g_f[name], g_r[name], 1e-4), name
    for a, b in zip(fused[1].buffers(), ref[1].buffers(), strict=True):
        assert _close(a.float(), b.float(), 1e-5)


def test_stem_falls_back_when_its_input_needs_a_gradient():
    """Inside a network the same pattern gets a gradient input: then it is the conv plus the fused block."""
    ref = _stem(2, 3, 1, True, False).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(ref)
    u = torch.randn(4, 2, 8, 8).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(4, 24, 4, 4)
    outs = []
    for model, fuse in ((ref, False), (fused, True)):
        ui = u.clone().requires_grad_(True)
        with fused_bn_relu_pool(model, enabled=fuse):
            out = model(ui)
        out.backward(grad)
        outs.append((out.detach(), ui.grad, model[0].weight.grad))
    assert all(_close(a, b) for a, b in zip(*outs, strict=True))
    ref.eval(), fused.eval()
    with fused_bn_relu_pool(fused):
        assert _close(fused(u), ref(u), 1e-6)  # eval: the conv, then pool-first BN


def test_modules_with_hooks_are_not_fused():
    block = _block(3, relu_first=True)
    handle = block[1].register_forward_hook(lambda *_: None)  # e.g. a feature-map probe on the ReLU
    with fused_bn_relu_pool(block) as n:
        assert n == 0
    handle.remove()
    with fused_bn_relu_pool(block) as n:
        assert n == 1


def test_engine_trains_the_same_with_and_without_fusion():
    torch.manual_seed(0)
    base = build_model("textbook-cnn", (1, 16, 16), 4)
    # SGD: Adam would turn the conv biases' zero gradients (BN cancels them) into +-lr steps by rounding noise
    cfg = TrainConfig(optimizer="sgd", lr=0.05)
    x, y = torch.randn(96, 1, 16, 16), torch.randint(0, 4, (96,))
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    results = []
    for fuse in (False, True):
        model = copy.deepcopy(base).to(memory_format=torch.channels_last)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0  # no random masks: the two runs see identical maths
        opt = build_optimizer(list(model.parameters()), cfg)
        tr = train_one_epoch(
            model, batches, opt, cross_entropy(), device=torch.device("cpu"), channels_last=True, fuse=fuse
        )
        ev = evaluate(model, batches, device=torch.device("cpu"), channels_last=True, fuse=fuse)
        results.append((tr["loss"], ev["loss"], [p.detach().clone() for p in model.parameters()]))
    (tl_a, el_a, p_a), (tl_b, el_b, p_b) = results
    assert tl_a == pytest.approx(tl_b, rel=1e-5) and el_a == pytest.approx(el_b, rel=1e-4)
    assert all(_close(a, b, 1e-3) for a, b in zip(p_a, p_b, strict=True))


def test_kernels_build_into_the_cache(tmp_path, monkeypatch):
    if kernels._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = kernels.load.__wrapped__()
    assert lib is not None and hasattr(lib, "brp_dx")
    assert [p.name.startswith("bn_relu_pool-") for p in (tmp_path / "torchdojo" / "kernels").iterdir()] == [True]


def test_a_missing_compiler_falls_back_to_torch_ops_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(UserWarning, match="using PyTorch ops"):
        assert kernels.load.__wrapped__() is None
    monkeypatch.setenv("TORCHDOJO_KERNELS", "0")
    assert kernels.load.__wrapped__() is None  # switched off: no warning
