"""Receptive fields from the graph: each node maps its inputs' fields through its own geometry.

A field per spatial dim is (size, jump, start) in input pixels. A node with several inputs (residual add,
concat, attention-style scaling) takes the union of its inputs' fields, i.e. the maximum over paths.
`gradient_support` measures the same thing empirically: the input pixels the gradient of one output
unit reaches.
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


def input_rf(shape: tuple[int, ...]) -> RF:
    """The field of the network input (C, *spatial): one pixel per unit."""
    if len(shape) < 2:
        return None
    return tuple(DimRF(1, 1, 0, int(n)) for n in shape[1:])


def merge(fields: list[RF]) -> RF:
    """The union of several inputs' fields (the maximum over the paths into a node)."""
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    if len({len(f) for f in fields}) > 1:
        return tuple(dataclasses.replace(d, whole=True, size=d.extent) for d in fields[0])
    out = []
    for dims in zip(*fields, strict=True):
        if any(d.whole for d in dims):
            out.append(DimRF(dims[0].extent, 0, (dims[0].extent - 1) / 2, dims[0].extent, True))
            continue
        lo = min(d.start - (d.size - 1) / 2 for d in dims)
        hi = max(d.start + (d.size - 1) / 2 for d in dims)
        out.append(DimRF(hi - lo + 1, max(d.jump for d in dims), (lo + hi) / 2, dims[0].extent))
    return tuple(out)


def apply(field: RF, geo: list[Geo] | str) -> RF:
    """The field after a node with geometry `geo` ('pointwise', 'global', or one Geo per spatial dim)."""
    if field is None or geo == "pointwise":
        return field
    if geo == "global" or len(geo) != len(field):
        return tuple(DimRF(d.extent, 0, (d.extent - 1) / 2, d.extent, True) for d in field)
    out = []
    for d, g in zip(field, geo, strict=True):
        if d.whole or g.whole:
            out.append(DimRF(d.extent, 0, (d.extent - 1) / 2, d.extent, True))
        else:
            out.append(DimRF(d.size + (g.span - 1) * d.jump, d.jump * g.stride, d.start + g.center * d.jump, d.extent))
    return tuple(out)


def _transposed_span(k: int, s: int, p: int, d: int) -> int:
    """Most input units one output unit of a transposed conv depends on (span from first to last)."""
    best = 1
    for o in range(s * d * k + s):  # one full period of output positions
        idx = [(o + p - j * d) // s for j in range(k) if (o + p - j * d) % s == 0]
        if idx:
            best = max(best, max(idx) - min(idx) + 1)
    return best


def geometry(op: Op, in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...] | None) -> list[Geo] | str:
    """One Geo per spatial dim for conv/pool/adaptive-pool/upsample; otherwise decided by the shapes."""
    if in_shape is None or out_shape is None:
        return "pointwise"
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
        return geos
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
    if op.key in ("mha", "sdpa"):
        return "global"
    if op.key in ("linear", "matmul", "rnn", "rnncell"):
        return "global" if len(in_shape) > 2 or len(out_shape) > 2 else "pointwise"
    if len(out_shape) == len(in_shape) and spatial_in == spatial_out:
        return "pointwise"
    return "global"


def subgraph(gm: fx.GraphModule, node_name: str) -> fx.GraphModule:
    """A copy of `gm` whose output is the node named `node_name` (dead code removed)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    target = None
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        env[n] = graph.node_copy(n, lambda a: env[a])
        if n.name == node_name:
            target = env[n]
            break
    if target is None:
        names = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
        from torchdojo.errors import DojoError

        raise DojoError(f"no layer named {node_name!r} in the graph", f"layers: {', '.join(names[:40])} ...")
    graph.output(target)
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
