"""Transposed convolution by scatter-add against torch.nn.ConvTranspose2d (A3)."""

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchdojo.nn.conv_transpose import ConvTranspose2d, conv_transpose2d, output_size

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    op = (draw(st.integers(0, max(s[0], d[0]) - 1)), draw(st.integers(0, max(s[1], d[1]) - 1)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    size = []
    for i in range(2):  # smallest input whose output is still >= 1
        n0 = 1
        while (n0 - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 < 1:
            n0 += 1
        size.append(draw(st.integers(n0, n0 + 4)))
    return {
        "cin": cin,
        "cout": cout,
        "k": k,
        "s": s,
        "p": p,
        "op": op,
        "d": d,
        "groups": groups,
        "shape": (draw(st.integers(1, 3)), cin, *size),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "seed": draw(st.integers(0, 10**6)),
    }


@settings(max_examples=250, deadline=None, database=None)
@given(configs())
def test_forward_and_gradients_match_torch(c: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(c["seed"])
    dt, tol = c["dtype"], TOL[c["dtype"]]
    x = torch.randn(c["shape"], generator=g, dtype=dt)
    w = torch.randn(c["cin"], c["cout"] // c["groups"], *c["k"], generator=g, dtype=dt)
    b = torch.randn(c["cout"], generator=g, dtype=dt)
    args = (c["s"], c["p"], c["op"], c["groups"], c["d"])
    ours_in = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_in = [t.clone().requires_grad_() for t in (x, w, b)]
    y, y_ref = conv_transpose2d(*ours_in, *args), F.conv_transpose2d(*ref_in, *args)
    assert tuple(y.shape[2:]) == output_size(tuple(c["shape"][2:]), c["k"], c["s"], c["p"], c["op"], c["d"])
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    gy = torch.randn(y_ref.shape, generator=g, dtype=dt)
    y.backward(gy)
    y_ref.backward(gy)
    for ours, ref in zip(ours_in, ref_in, strict=True):
        torch.testing.assert_close(ours.grad, ref.grad, atol=tol, rtol=tol)


def test_worked_example_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    k = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    expected = torch.tensor([[1.0, 4.0, 4.0], [6.0, 20.0, 16.0], [9.0, 24.0, 16.0]])  # computed by hand
    torch.testing.assert_close(conv_transpose2d(x, k)[0, 0], expected)
    torch.testing.assert_close(
        conv_transpose2d(x, k, stride=2, padding=1)[0, 0], torch.tensor([[4.0, 6.0], [6.0, 4.0]])
    )


def test_module_state_dict_swaps_with_nn_and_errors() -> None:
    torch.manual_seed(0)
    ours = ConvTranspose2d(3, 4, (3, 2), stride=2, padding=1, output_padding=1)
    ref = nn.ConvTranspose2d(3, 4, (3, 2), stride=2, padding=1, output_padding=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(ours(x), ref(x))
    assert ours(x[0]).shape == ref(x[0]).shape
    bound = 1 / (4 * 3 * 2) ** 0.5  # fan_in of a transposed conv weight (C, O, kh, kw) is O * kh * kw
    assert ConvTranspose2d(64, 4, (3, 2)).weight.abs().max() <= bound
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        ours(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="4-D input"):
        ours(torch.randn(4, 4))
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        ConvTranspose2d(1, 1, 3, stride=1, output_padding=1)
    with pytest.raises(ValueError, match="crops more"):
        conv_transpose2d(torch.randn(1, 1, 1, 1), torch.randn(1, 1, 1, 1), padding=1)
