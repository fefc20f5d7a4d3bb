"""Straight-through estimators: non-differentiable forward, surrogate gradient backward (A4)."""

import torch

from torchdojo.nn.ste import Binarize, round_ste, sign_ste


def test_sign_forward_is_binary_and_gradient_passes_through() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.backward(torch.arange(1.0, 6.0))
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]  # identity: the true derivative would be all zeros


def test_clipped_sign_is_hardtanh_gradient() -> None:
    x = torch.tensor([-2.0, -0.999, -0.5, 0.3, 0.999, 1.5], requires_grad=True)
    sign_ste(x, clip=True).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    torch.nn.functional.hardtanh(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    edge = torch.tensor([-1.0, 1.0], requires_grad=True)
    sign_ste(edge, clip=True).sum().backward()
    assert edge.grad.tolist() == [1.0, 1.0]  # 1{|x| <= 1}, as in Hubara et al. (torch's hardtanh gives 0 there)


def test_round_ste() -> None:
    x = torch.tensor([-1.6, -0.4, 0.49, 2.5, 2.51], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == torch.round(x.detach()).tolist()
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 5
    x.grad = None
    round_ste(x, clip=True).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]


def test_binarize_layer_trains_a_linear_model_through_sign() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    target = torch.sign(x @ torch.tensor([1.0, -2.0, 0.5, 1.0]))
    lin, act = torch.nn.Linear(4, 1), Binarize(clip=False)
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    start = (act(lin(x)).squeeze(1) == target).float().mean()
    for _ in range(200):
        opt.zero_grad()
        loss = ((act(lin(x)).squeeze(1) - target) ** 2).mean()
        loss.backward()
        opt.step()
    end = (act(lin(x)).squeeze(1) == target).float().mean()
    assert end > 0.95 and end > start
