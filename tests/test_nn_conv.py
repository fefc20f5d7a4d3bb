"""The from-scratch Conv2d and its manual backward against torch.nn.Conv2d (A1, A2)."""

import ast
import inspect
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchdojo.nn import conv as conv_module
from torchdojo.nn.conv import Conv2d, conv2d

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@st.composite
def conv_configs(draw: Any) -> dict[str, Any]:
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h0, w0 = max(1, d[0] * (k[0] - 1) + 1 - 2 * p[0]), max(1, d[1] * (k[1] - 1) + 1 - 2 * p[1])
    shape = (draw(st.integers(1, 3)), cin, draw(st.integers(h0, h0 + 6)), draw(st.integers(w0, w0 + 6)))
    return {
        "cin": cin,
        "cout": cout,
        "k": k,
        "s": s,
        "p": p,
        "d": d,
        "groups": groups,
        "shape": shape,
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "seed": draw(st.integers(0, 10**6)),
    }


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@settings(max_examples=300, deadline=None, database=None)
@given(conv_configs())
def test_forward_and_both_gradients_match_torch(c: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(c["seed"])
    dt, tol = c["dtype"], TOL[c["dtype"]]
    x = torch.randn(c["shape"], generator=g, dtype=dt)
    w = torch.randn(c["cout"], c["cin"] // c["groups"], *c["k"], generator=g, dtype=dt)
    b = torch.randn(c["cout"], generator=g, dtype=dt)
    args = (c["s"], c["p"], c["d"], c["groups"])
    ours_in = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_in = [t.clone().requires_grad_() for t in (x, w, b)]
    y, y_ref = conv2d(*ours_in, *args), F.conv2d(*ref_in, *args)
    _close(y, y_ref, tol)
    gy = torch.randn(y_ref.shape, generator=g, dtype=dt)
    y.backward(gy)
    y_ref.backward(gy)
    for ours, ref in zip(ours_in, ref_in, strict=True):
        _close(ours.grad, ref.grad, tol)


@pytest.mark.parametrize(
    "stride,padding,dilation,groups",
    [(1, 0, 1, 1), (2, 1, 1, 1), ((3, 1), (0, 2), 1, 1), (1, 1, 2, 1), (2, 2, (1, 2), 2)],
)
def test_gradcheck_float64(stride: Any, padding: Any, dilation: Any, groups: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4 // groups, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b, stride, padding, dilation, groups), (x, w, b))


def test_manual_backward_is_used_not_autograd() -> None:
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    y = Conv2d(2, 3, (3, 3))(x)
    assert type(y.grad_fn).__name__ == "Conv2dFunctionBackward"


def test_state_dict_swaps_with_nn_conv2d_and_init_matches() -> None:
    torch.manual_seed(0)
    ours, ref = Conv2d(3, 8, (3, 5), stride=2, padding=1), nn.Conv2d(3, 8, (3, 5), stride=2, padding=1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    x = torch.randn(2, 3, 11, 9)
    ref.load_state_dict(ours.state_dict())
    _close(ours(x), ref(x), 1e-5)
    ref2 = nn.Conv2d(3, 8, (3, 5), stride=2, padding=1)
    ours.load_state_dict(ref2.state_dict())
    _close(ours(x), ref2(x), 1e-5)
    bound = 1 / (3 * 3 * 5) ** 0.5  # nn.Conv2d's kaiming_uniform(a=sqrt(5)) bound for weight and bias
    big = Conv2d(3, 64, (3, 5))
    assert big.weight.abs().max() <= bound and big.weight.abs().max() > 0.9 * bound
    assert big.bias.abs().max() <= bound
    assert abs(big.weight.std().item() - bound / 3**0.5) < 0.1 * bound


def test_seed_constructor_defaults_and_int_or_pair_arguments() -> None:
    m = Conv2d()
    assert (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding) == (
        1,
        1,
        (1, 1),
        (1, 1),
        (0, 0),
    )
    m = Conv2d(in_channels=2, out_channels=4, kernel_size=3, stride=(2, 1), padding=[1, 0])
    assert (m.kernel_size, m.stride, m.padding) == ((3, 3), (2, 1), (1, 0))
    assert m(torch.randn(1, 2, 9, 9)).shape == (1, 4, 5, 7)
    assert m(torch.randn(2, 9, 9)).shape == (4, 5, 7)  # unbatched, like nn.Conv2d
    assert Conv2d(2, 2, 3, bias=False).bias is None


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.randn(3, 8), r"4-D input .* got 2-D input of shape \(3, 8\)"),
        (torch.randn(1, 1, 3, 8, 8), "got 5-D"),
        (torch.randn(1, 2, 8, 8), "expects 3 input channels, got 2"),
        (torch.randn(1, 3, 3, 8), r"kernel 5x5 .* larger than the padded input 3x8"),
    ],
)
def test_wrong_input_is_a_clear_value_error(x: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Conv2d(3, 4, 5)(x)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        Conv2d(1, 1, (1, 2, 3))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        Conv2d(1, 1, 3, stride=0)
    with pytest.raises(ValueError, match="divisible by groups"):
        Conv2d(3, 4, 3, groups=2)


def test_no_torch_nn_maths_in_the_computation() -> None:
    tree = ast.parse(inspect.getsource(conv_module))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "torch.nn.functional" not in modules and "functional" not in imported
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not attrs & {"functional", "conv2d", "pad", "fold", "Conv2d"}  # e.g. torch.conv2d, F.pad
    nn_uses = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "nn"
    }
    assert nn_uses <= {"Module", "Parameter"}
