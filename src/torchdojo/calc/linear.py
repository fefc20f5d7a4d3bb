"""A linearised float64 copy of a traced network, to measure receptive fields by gradient support.

The gradient of one output unit of a network with ReLUs and max-pools reaches only the input pixels its
active paths reach, so its support can be smaller than the field the graph implies. In the linearised copy
every conv/linear weight is 1/fan-in (positive), biases are 0, other parameters (layer scales, embeddings)
are 1, normalisations are the identity, activations are removed and max-pooling becomes average pooling;
the input is positive. Gates (Sigmoid, Hardsigmoid) stay, as sigmoids: without them the products of
squeeze-excitation blocks (x times a function of x) grow doubly exponentially and overflow, and a
sigmoid's derivative is never 0. Every path then carries a positive product, nothing cancels, and the
support of the gradient is exactly the set of input pixels the unit depends on (the strict field,
clipped by the borders of the input).
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from torchdojo.calc.ops import ACT_FUNCS, ACT_METHODS, classify_module
from torchdojo.calc.receptive import subgraph

_POOLS = {
    F.max_pool1d: F.avg_pool1d,
    F.max_pool2d: F.avg_pool2d,
    F.max_pool3d: F.avg_pool3d,
    F.adaptive_max_pool1d: F.adaptive_avg_pool1d,
    F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
    F.adaptive_max_pool3d: F.adaptive_avg_pool3d,
}


GATES = (nn.Sigmoid, nn.Hardsigmoid)  # kept, as sigmoids: a product of gates in (0, 1) stays bounded
GATE_FUNCS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}


class _SharedGroups(nn.Module):
    """A grouped conv whose groups all carry the same weights (as in the linearised copy), run as one conv
    over batch x groups samples: the same numbers, without torch's per-group float64 CPU path (which is
    about 40 times slower for a depthwise conv)."""

    def __init__(self, conv: nn.modules.conv._ConvNd) -> None:
        super().__init__()
        cls = type(conv) if type(conv) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) else nn.Conv2d
        g = conv.groups
        self.groups = g
        self.conv = cls(
            conv.in_channels // g,
            conv.out_channels // g,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=False,
            padding_mode=conv.padding_mode,
            dtype=conv.weight.dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        y = self.conv(x.reshape(n * self.groups, c // self.groups, *x.shape[2:]))
        return y.reshape(n, self.groups * y.shape[1], *y.shape[2:])


def _avg_module(m: nn.Module) -> nn.Module | None:
    """The average pool with the geometry of max-pool `m` (None when `m` is not a max-pool)."""
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        _no_dilation(m.dilation, str(m))
        cls = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}[type(m)]
        return cls(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)
    if isinstance(m, nn.modules.pooling._AdaptiveMaxPoolNd):
        n = int(type(m).__name__[-2])
        return {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[n](m.output_size)
    return None


def _no_dilation(dilation: int | tuple[int, ...], what: str) -> None:
    if any(d != 1 for d in (dilation if isinstance(dilation, (list, tuple)) else [dilation])):
        raise ValueError(f"{what}: a dilated max-pool has no average-pool equivalent")


def _identity_call(n: fx.Node) -> bool:
    """An activation or normalisation call (removed in the linearised copy)."""
    if n.op == "call_method":
        return n.target in ACT_METHODS
    return n.target in ACT_FUNCS or n.target in (F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm)


def _set_weights(gm: fx.GraphModule) -> None:
    with torch.no_grad():
        done: set[int] = set()
        for m in gm.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.fill_(1 / fan_in)
                done.add(id(m.weight))
                if m.bias is not None:
                    m.bias.zero_()
                    done.add(id(m.bias))
        for p in gm.parameters():
            if id(p) not in done:
                p.fill_(1.0)


def linearise(gm: fx.GraphModule) -> fx.GraphModule:
    """The float64 linearised copy of `gm` (module description above); `gm` is left untouched."""
    lin = copy.deepcopy(gm).double().eval()
    for n in list(lin.graph.nodes):
        if n.op == "call_module":
            m = lin.get_submodule(n.target)
            key = classify_module(m).key
            avg = _avg_module(m)
            if avg is not None:
                _replace_module(lin, n.target, avg)
            elif isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not m.transposed:
                _replace_module(lin, n.target, _SharedGroups(m))
            elif isinstance(m, GATES):
                _replace_module(lin, n.target, nn.Sigmoid())
            elif key in ("act", "bn", "norm"):
                n.replace_all_uses_with(n.args[0])
                lin.graph.erase_node(n)
        elif n.op in ("call_function", "call_method"):
            if n.target in _POOLS:
                n.target = _POOLS[n.target]
                if n.target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
                    _drop_maxpool_only_args(n)
                else:  # adaptive: (x, output_size[, return_indices])
                    n.args = n.args[:2]
                    n.kwargs = {k: v for k, v in n.kwargs.items() if k != "return_indices"}
                continue
            if n.target in GATE_FUNCS or n.target in ("sigmoid", "sigmoid_"):
                n.target, n.op, n.args, n.kwargs = torch.sigmoid, "call_function", n.args[:1], {}
            elif _identity_call(n) and n.args and isinstance(n.args[0], fx.Node):
                n.replace_all_uses_with(n.args[0])
                lin.graph.erase_node(n)
    lin.graph.eliminate_dead_code()
    lin.recompile()
    _set_weights(lin)
    return lin


def _drop_maxpool_only_args(n: fx.Node) -> None:
    """F.max_pool2d(x, k, s, p, dilation, ceil_mode, return_indices) -> F.avg_pool2d(x, k, s, p, ceil_mode)."""
    args = list(n.args)
    kwargs = dict(n.kwargs)
    _no_dilation(args[4] if len(args) > 4 else kwargs.pop("dilation", 1), n.name)
    ceil = args[5] if len(args) > 5 else kwargs.pop("ceil_mode", False)
    kwargs.pop("return_indices", None)
    n.args = tuple(args[:4])
    n.kwargs = {**kwargs, "ceil_mode": ceil}


def _replace_module(gm: fx.GraphModule, target: str, new: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, new)


def support_intervals(
    gm: fx.GraphModule,
    in_shape: tuple[int, ...],
    nodes: list[str],
    positions: list[tuple[int, ...] | None] | None = None,
) -> list[tuple[tuple[int, int], ...]]:
    """(first, last) input index per spatial dim that the gradient of one unit of each of `nodes` reaches,
    on the linearised copy with a positive input (one forward pass for all of them); each unit is at its
    `positions` entry (default: the centre of that node's output)."""
    lin = linearise(subgraph(gm, list(nodes)))
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((1, *in_shape), dtype=torch.float64, generator=g) + 0.5).requires_grad_(True)
    ys = lin(x)
    out = []
    for i, y in enumerate(ys):
        pos = (positions or [None] * len(nodes))[i] or tuple(n // 2 for n in y.shape[2:])
        (grad,) = torch.autograd.grad(y[(0, slice(None), *pos)].sum(), x, retain_graph=i < len(ys) - 1)
        out.append(_extent(grad[0].abs().sum(0) > 0))
    return out


def _extent(mask: torch.Tensor) -> tuple[tuple[int, int], ...]:
    spans = []
    for dim in range(mask.dim()):
        other = tuple(i for i in range(mask.dim()) if i != dim)
        idx = torch.nonzero(mask.any(dim=other) if other else mask).flatten()
        spans.append((int(idx.min()), int(idx.max())) if len(idx) else (-1, -1))
    return tuple(spans)


def expected_interval(size: float, jump: float, start: float, position: int, extent: int) -> tuple[int, int]:
    """The input pixels an analytic field (size, jump, start) of the unit at `position` covers, clipped."""
    centre = start + position * jump
    lo, hi = centre - (size - 1) / 2, centre + (size - 1) / 2
    return max(0, math.ceil(lo)), min(extent - 1, math.floor(hi))
