"""Receptive-field geometry of windowed ops, and its empirical measurement.

A field per input spatial dim is (size, jump, start) in input pixels; `geometry` says how one conv, pool,
adaptive pool or upsample window maps it (calc.fields carries it through the rest of the graph).
`gradient_map` and `support` measure the same thing empirically: the input pixels the gradient of one
output unit reaches.
"""

import dataclasses
import math

import torch
from torch import fx

from torchdojo.calc.ops import Op


@dataclasses.dataclass(frozen=True)
class DimRF:
    """The field of output unit 0 along one spatial dim, in input pixels; `whole` = every input pixel."""

    size: float
    jump: float
    start: float
    extent: int  # the input's length along this dim
    whole: bool = False

    def text(self) -> str:
        if self.whole:
            return "all"
        return _num(self.size)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


RF = tuple[DimRF, ...] | None  # None: the tensor has no spatial meaning (e.g. the network input is a vector)


@dataclasses.dataclass(frozen=True)
class Geo:
    """How one output unit of a node sees its input along one dim: `span` input units, `stride` between
    adjacent outputs, `center` = centre of output 0's window in input units; `whole` = all of them."""

    span: float = 1
    stride: float = 1
    center: float = 0
    whole: bool = False


def _transposed_span(k: int, s: int, p: int, d: int) -> int:
    """Most input units one output unit of a transposed conv depends on (span from first to last)."""
    best = 1
    for o in range(s * d * k + s):  # one full period of output positions
        idx = [(o + p - j * d) // s for j in range(k) if (o + p - j * d) % s == 0]
        if idx:
            best = max(best, max(idx) - min(idx) + 1)
    return best


def geometry(op: Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[Geo] | None:
    """One Geo per window axis (the last ones) of a conv, pool, adaptive pool or upsample; None otherwise."""
    spatial_in, spatial_out = tuple(in_shape[2:]), tuple(out_shape[2:])
    if op.key == "conv":
        a = op.attrs
        geos = []
        for i, (k, s, dil) in enumerate(zip(a["kernel"], a["stride"], a["dilation"], strict=True)):
            keff = dil * (k - 1) + 1
            if a["padding"] == "same":
                p = dil * (k - 1) // 2
            elif a["padding"] == "valid":
                p = 0
            else:
                p = a["padding"][i]
            if a["transposed"]:
                geos.append(Geo(_transposed_span(k, s, p, dil), 1 / s, (p - (keff - 1) / 2) / s))
            else:
                geos.append(Geo(keff, s, (keff - 1) / 2 - p))
        return geos if len(geos) <= len(in_shape) else None
    if op.key == "pool":
        a = op.attrs
        return [
            Geo(dil * (k - 1) + 1, s, dil * (k - 1) / 2 - p)
            for k, s, p, dil in zip(a["kernel"], a["stride"], a["padding"], a["dilation"], strict=True)
        ]
    if op.key == "adaptive_pool" and len(spatial_in) == len(spatial_out):
        geos = []
        for n, o in zip(spatial_in, spatial_out, strict=True):
            if o == 1 and n > 1:
                geos.append(Geo(whole=True))
                continue
            # window i covers [floor(i*n/o), ceil((i+1)*n/o)), as torch's adaptive pooling
            span = max(math.ceil((i + 1) * n / o) - (i * n) // o for i in range(o))
            geos.append(Geo(span, n / o, (math.ceil(n / o) - 1) / 2))
        return geos
    if op.key == "upsample" and len(spatial_in) == len(spatial_out):
        nearest = op.attrs.get("mode", "nearest") == "nearest"
        return [
            Geo(1, n / o, 0) if nearest else Geo(2, n / o, 0.5 * n / o - 0.5)
            for n, o in zip(spatial_in, spatial_out, strict=True)
        ]
    return None


def subgraph(gm: fx.GraphModule, node_name: str | list[str]) -> fx.GraphModule:
    """A copy of `gm` whose output is the node named `node_name` (a tuple of them when given a list),
    dead code removed."""
    wanted = [node_name] if isinstance(node_name, str) else list(node_name)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    found: dict[str, fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "output" or len(found) == len(wanted):
            break
        env[n] = graph.node_copy(n, lambda a: env[a])
        if n.name in wanted:
            found[n.name] = env[n]
    missing = [w for w in wanted if w not in found]
    if missing:
        names = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
        from torchdojo.errors import DojoError

        raise DojoError(f"no layer named {missing[0]!r} in the graph", f"layers: {', '.join(names[:40])} ...")
    graph.output(found[wanted[0]] if isinstance(node_name, str) else tuple(found[w] for w in wanted))
    sub = fx.GraphModule(gm, graph)
    sub.graph.eliminate_dead_code()
    sub.recompile()
    return sub


def gradient_map(
    gm: fx.GraphModule,
    in_shape: tuple[int, ...],
    node_name: str | None = None,
    position: tuple[int, ...] | None = None,
    samples: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """Mean |d output unit / d input| over `samples` random inputs: the empirical (effective) field.

    The unit is one spatial position (default: the centre) of `node_name`'s output (default: the last
    layer with spatial dims), summed over channels; the map has the input's spatial shape.
    """
    sub = subgraph(gm, node_name) if node_name else gm
    modes = {m: m.training for m in sub.modules()}
    sub.eval()
    g = torch.Generator().manual_seed(seed)
    param = next(gm.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    total = torch.zeros(in_shape[1:], dtype=torch.float64)
    for _ in range(samples):
        x = torch.randn((1, *in_shape), generator=g, dtype=dtype).requires_grad_(True)
        y = sub(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if y.dim() < 3:
            raise ValueError(f"layer {node_name or 'output'} has no spatial dims (shape {tuple(y.shape)})")
        pos = position or tuple(n // 2 for n in y.shape[2:])
        unit = y[(0, slice(None), *pos)].sum()
        (grad,) = torch.autograd.grad(unit, x)
        total += grad[0].abs().sum(0).double()
    for m, mode in modes.items():
        m.training = mode
    return total / samples


def support(grad: torch.Tensor, rel_eps: float = 0.0) -> tuple[int, ...]:
    """Extent of the non-zero region of a gradient map along each dim (the measured field size)."""
    mask = grad > rel_eps * float(grad.max())
    sizes = []
    for dim in range(grad.dim()):
        other = tuple(i for i in range(grad.dim()) if i != dim)
        hit = mask.any(dim=other) if other else mask
        idx = torch.nonzero(hit).flatten()
        sizes.append(int(idx.max() - idx.min() + 1) if len(idx) else 0)
    return tuple(sizes)
