"""Receptive fields from the graph against the analytic recursion on chains and the gradient support."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchdojo.calc import analyze
from torchdojo.calc.receptive import gradient_map, support


def analytic_chain(layers: list[tuple[int, int, int]]) -> int:
    """r_L = 1 + sum_l d_l (k_l - 1) prod_{i<l} s_i for (kernel, stride, dilation) layers."""
    r, j = 1, 1
    for k, s, d in layers:
        r += d * (k - 1) * j
        j *= s
    return r


def measured(model: nn.Module, shape: tuple[int, ...], position: tuple[int, ...] | None = None) -> tuple:
    a = analyze(model, shape)
    last = [r for r in a.layers if r.rf is not None and not any(d.whole for d in r.rf)][-1]
    grad = gradient_map(a.gm, shape, last.node, position=position, samples=2)
    return tuple(d.size for d in last.rf), support(grad)


def test_textbook_chain_b2() -> None:
    model = nn.Sequential(
        *[m for c_in, c_out in ((3, 4), (4, 4), (4, 4)) for m in (nn.Conv2d(c_in, c_out, 5, 2, 2), nn.Tanh())]
    )
    rf, grad = measured(model, (3, 96, 96))
    assert rf == (29, 29) == (analytic_chain([(5, 2, 1)] * 3),) * 2
    assert grad == (29, 29)


layer = st.tuples(st.integers(1, 5), st.integers(1, 2), st.integers(1, 2), st.integers(0, 2))


@settings(max_examples=12, deadline=None)
@given(st.lists(layer, min_size=1, max_size=3), st.booleans())
def test_random_chains_match_analytic_and_gradient(layers: list[tuple[int, int, int, int]], pool: bool) -> None:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    spec = []
    for i, (k, s, d, p) in enumerate(layers):
        mods += [
            nn.Conv2d(1 if i == 0 else 3, 3, (k, max(k - 1, 1)), stride=(s, 1), padding=p, dilation=d),
            nn.Tanh(),
        ]
        spec.append((k, s, d))
    if pool:
        mods.append(nn.AvgPool2d(2))
        spec.append((2, 2, 1))
    rf, grad = measured(nn.Sequential(*mods), (1, 128, 128))
    assert rf[0] == analytic_chain(spec)  # H: kernel k, stride s
    w_spec = [(max(k - 1, 1), 1, d) for k, _, d, _ in layers] + ([(2, 2, 1)] if pool else [])
    assert rf[1] == analytic_chain(w_spec)  # W: kernel k-1, stride 1 (non-square)
    assert grad == rf


class Residual(nn.Module):
    """x + f(x) where f has a bigger field than the identity: the union is f's."""

    def __init__(self, c: int, k: int, dilation: int = 1):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(c, c, k, padding=dilation * (k // 2), dilation=dilation),
            nn.Tanh(),
            nn.Conv2d(c, c, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.f(x) + self.shortcut(x))


class Inception(nn.Module):
    """Two branches concatenated: a 3x3 and a 7x1 then 1x7; the union is 7x7."""

    def __init__(self, c: int):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Sequential(nn.Conv2d(c, c, (7, 1), padding=(3, 0)), nn.Conv2d(c, c, (1, 7), padding=(0, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


@settings(max_examples=8, deadline=None)
@given(st.integers(3, 5).filter(lambda k: k % 2 == 1), st.integers(1, 2), st.integers(1, 3))
def test_residual_and_branching_nets_match_gradient(k: int, dilation: int, blocks: int) -> None:
    torch.manual_seed(1)
    mods: list[nn.Module] = [nn.Conv2d(1, 3, 3, stride=2, padding=1)]
    for _ in range(blocks):
        mods.append(Residual(3, k, dilation))
    mods.append(Inception(3))
    mods.append(nn.Conv2d(6, 2, 1))
    rf, grad = measured(nn.Sequential(*mods), (1, 160, 160))
    per_block = dilation * (k - 1) + 2  # f: dilated k then 3x3, at jump 2
    expected = 3 + blocks * per_block * 2 + 6 * 2
    assert rf == (expected, expected)
    assert grad == rf


def test_transposed_conv_field_is_max_over_positions() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1),
        nn.Tanh(),
    )
    a = analyze(model, (1, 40, 40))
    rf = [d.size for d in a.layers[-1].rf]
    # the output units alternate between 1 and 2 contributing inputs: the field is the larger one
    sizes = set()
    for off in range(2):
        pos = (20 + off, 20 + off)
        sizes.add(support(gradient_map(a.gm, (1, 40, 40), a.layers[-1].node, position=pos, samples=2)))
    assert rf == [5, 5] == [max(s[0] for s in sizes)] * 2
    assert len(sizes) == 2  # the smaller one is real too: 3x3


def test_global_ops_make_the_field_whole() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    a = analyze(model, (3, 16, 16))
    assert [d.size for d in a.layers[0].rf] == [3, 3]
    assert all(d.whole for r in a.layers[1:] for d in r.rf)
    mlp = analyze(nn.Sequential(nn.Linear(10, 4)), (10,))
    assert mlp.layers[0].rf is None  # a vector input has no spatial field
