"""ElmanCell against nn.RNNCell: same state dict, same outputs and gradients."""

import pytest
import torch
from torch import nn

from torchdojo.nn.elman import ElmanCell


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_matches_rnncell(bias: bool, nonlinearity: str) -> None:
    torch.manual_seed(0)
    ours = ElmanCell(5, 7, bias=bias, nonlinearity=nonlinearity).double()
    ref = nn.RNNCell(5, 7, bias=bias, nonlinearity=nonlinearity).double()
    shapes = [(n, p.shape) for n, p in ours.named_parameters()]
    assert shapes == [(n, p.shape) for n, p in ref.named_parameters()]
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x, h), ref(x, h))
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours(x[0], h[0]), ref(x[0], h[0]))
    g_ours = torch.autograd.grad(ours(x, h).sum(), [x, h, *ours.parameters()])
    g_ref = torch.autograd.grad(ref(x, h).sum(), [x, h, *ref.parameters()])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_init_range_and_errors() -> None:
    cell = ElmanCell(4, 16)
    assert all(p.abs().max() <= 0.25 for p in cell.parameters())
    with pytest.raises(ValueError, match="input features"):
        cell(torch.randn(2, 3))
    with pytest.raises(ValueError, match="h of shape"):
        cell(torch.randn(2, 4), torch.randn(3, 16))
    with pytest.raises(ValueError, match="nonlinearity"):
        ElmanCell(4, 16, nonlinearity="sigmoid")
