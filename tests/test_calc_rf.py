"""Receptive fields from the graph against the analytic recursion on chains and the gradient support."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchdojo.calc import Analysis, analyze
from torchdojo.calc import format as fmt
from torchdojo.calc.fields import Axis, regroup
from torchdojo.calc.linear import expected_interval, support_intervals
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


def conv(c_in: int, c_out: int, k: int, s: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups)


def check_against_gradient(model: nn.Module, shape: tuple[int, ...]) -> Analysis:
    """Every NCHW layer's strict field, at its centre unit, equals the linearised gradient support."""
    a = analyze(model, shape)
    rows = [r for r in a.layers if r.spatial_axes == (2, 3) and len(r.out_shape) == 4]
    measured = support_intervals(a.gm, shape, [r.node for r in rows])
    for row, got in zip(rows, measured, strict=True):
        want = tuple(
            (0, e - 1) if d.whole else expected_interval(d.size, d.jump, d.start, n // 2, e)
            for d, n, e in zip(row.rf, row.out_shape[2:], shape[1:], strict=True)
        )
        assert got == want, (row.name, row.rf, got)
    return a


class NHWCBlock(nn.Module):
    """ConvNeXt's block shape: depthwise conv, then LayerNorm and an MLP over the channel axis in NHWC."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = conv(c, c, 7, groups=c)
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.scale = nn.Parameter(torch.full((c, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        return x + self.scale * y


def test_nhwc_permute_linear_and_layernorm_keep_the_spatial_dims() -> None:
    model = nn.Sequential(conv(3, 4, 4, 4), NHWCBlock(4), NHWCBlock(4), conv(4, 4, 3, 2))
    a = check_against_gradient(model, (3, 96, 96))
    assert [d.size for d in a.last_spatial.rf] == [4 + 2 * 6 * 4 + 2 * 4] * 2  # 60
    assert a.last_spatial.rf == a.last_spatial.rf_path
    nhwc = [r for r in a.layers if r.type == "Linear"]
    assert nhwc and all(r.spatial_axes == (1, 2) and not any(d.whole for d in r.rf) for r in nhwc)


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle three ways: view to 5-D + transpose + view back, the function, the module."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.module = how, nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        if self.how == "view":
            return torch.transpose(x.view(n, 2, c // 2, h, w), 1, 2).contiguous().view(n, -1, h, w)
        if self.how == "function":
            return torch.channel_shuffle(x, 2)
        return self.module(x)


@pytest.mark.parametrize("how", ["view", "function", "module"])
def test_channel_shuffle_keeps_the_field(how: str) -> None:
    model = nn.Sequential(conv(3, 4, 3, 2), Shuffle(how), conv(4, 4, 5), Shuffle(how), conv(4, 2, 3))
    a = check_against_gradient(model, (3, 64, 64))
    assert [d.size for d in a.last_spatial.rf] == [3 + 4 * 2 + 2 * 2] * 2


class Gate(nn.Module):
    """Squeeze-excitation: a per-channel gate from the global mean, broadcast back over the image."""

    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def test_a_global_gate_makes_the_strict_field_whole_but_not_the_conv_path() -> None:
    model = nn.Sequential(conv(3, 4, 3), Gate(4), conv(4, 4, 5))
    a = check_against_gradient(model, (3, 40, 40))  # the gradient reaches every pixel through the gate
    last = a.last_spatial
    assert all(d.whole for d in last.rf) and [d.size for d in last.rf_path] == [7, 7]
    assert "strict all (every input pixel)" in fmt.summary_lines(a)[3] and "conv path 7 px" in fmt.summary_lines(a)[3]


class Windows(nn.Module):
    """Swin-style window partition, an MLP over channels inside each window, and the reverse."""

    def __init__(self, c: int, w: int):
        super().__init__()
        self.w, self.fc = w, nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, wd = x.shape
        s = self.w
        y = x.view(n, c, h // s, s, wd // s, s).permute(0, 2, 4, 3, 5, 1).reshape(-1, s * s, c)
        y = self.fc(y)
        y = y.view(n, h // s, wd // s, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, wd)
        return y


class Tokens(nn.Module):
    """Flatten H and W into tokens (N, HW, C), a Linear over channels, then back to an image."""

    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.fc(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("block", [Windows(4, 4), Tokens(4)])
def test_views_that_split_or_merge_spatial_axes_and_come_back(block: nn.Module) -> None:
    model = nn.Sequential(conv(3, 4, 3), block, conv(4, 4, 3))
    a = check_against_gradient(model, (3, 32, 32))
    assert [d.size for d in a.last_spatial.rf] == [5, 5]


class Crop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x[:, :, 3:, ::2], (1, 2, 0, 0))


def test_slicing_and_padding_move_start_and_jump() -> None:
    model = nn.Sequential(conv(3, 4, 3), Crop(), conv(4, 4, 3), Crop(), conv(4, 2, 3))
    a = check_against_gradient(model, (3, 48, 48))  # checks size, jump and start at every layer
    rf = a.last_spatial.rf
    assert (rf[0].size, rf[0].jump) == (7, 1) and (rf[1].size, rf[1].jump) == (15, 4)


def test_mixing_along_a_spatial_axis_makes_it_whole() -> None:
    class SoftmaxOverWidth(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.softmax(x, dim=-1)

    a = analyze(nn.Sequential(conv(3, 4, 3), SoftmaxOverWidth(), conv(4, 4, 3)), (3, 16, 16))
    h, w = a.last_spatial.rf
    assert (h.size, w.whole) == (5, True)
    tokens = analyze(nn.Sequential(conv(3, 4, 3), nn.Flatten(2), nn.Linear(256, 8)), (3, 16, 16))
    assert all(d.whole for d in tokens.layers[-1].rf)  # a Linear over the flattened positions


def test_regroup_labels() -> None:
    a, b = Axis(frozenset({0})), Axis(frozenset({1}))
    assert regroup((None, None, a, b), (1, 6, 4, 5), (1, 2, 3, 4, 5)) == (None, None, None, a, b)
    merged = regroup((None, None, a, b), (1, 6, 4, 5), (1, 6, 20))
    assert merged[2].kind == "mix" and merged[2].pure and merged[2].dims == {0, 1}
    assert regroup(merged, (1, 6, 20), (1, 6, 4, 5)) == (None, None, a, b)
    features = regroup((None, None, a, b), (1, 6, 4, 5), (1, 120))
    assert not features[1].pure  # channels went in: no longer a spatial axis
    assert regroup((None, a), (2, 6), (2, 5)) is None
