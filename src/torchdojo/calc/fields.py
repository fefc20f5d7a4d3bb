"""Receptive fields through any graph: every tensor axis carries the input spatial dim it runs along.

The network input (N, C, *spatial) starts with its spatial axes labelled 0, 1, ...; each node maps its
inputs' labels to its output's (a permute moves them, an NHWC Linear leaves them alone, a channel-shuffle
view splits and re-merges only the channel axis, a flatten of H and W makes a token axis) and each input
spatial dim's field (calc.receptive.DimRF) through its geometry. An op that mixes along a labelled axis (a
Linear over it, attention, a reduction, softmax) makes that dim's field whole.

Two fields per tensor: `strict` follows every dependency (a squeeze-excitation gate, computed from a global
pool and broadcast back over the image, makes it "all"); `path` leaves out such broadcast inputs and is the
field papers quote for those networks (the conv path).
"""

import dataclasses
from typing import Any

from torchdojo.calc.ops import Op
from torchdojo.calc.receptive import DimRF, Geo, geometry

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Axis:
    """What one tensor axis runs along. `dims`: the input spatial dims in it; `kind`: 'plain' (one dim, as
    in the input), 'part' (factor `part` of `parts` of a split plain axis, outer first) or 'mix' (several
    axes flattened together, remembered so that a view back to them restores them); `pure`: only spatial
    axes went into it (a token axis), no channels."""

    dims: frozenset[int]
    kind: str = "plain"
    part: int = 0
    parts: int = 1
    pure: bool = True
    members: tuple[tuple["Axis | None", int], ...] = ()  # a 'mix': the (label, size) axes it was made of

    @property
    def dim(self) -> int | None:
        """The input dim when the axis is plain (a conv or pool may slide along it), else None."""
        return next(iter(self.dims)) if self.kind == "plain" else None


Label = Axis | None  # None: a batch, channel or feature axis


@dataclasses.dataclass(frozen=True)
class Field:
    """The labels of a tensor's axes and the field of its unit 0 along each input spatial dim."""

    axes: tuple[Label, ...]
    strict: tuple[DimRF, ...]
    path: tuple[DimRF, ...]

    @property
    def spatial(self) -> bool:
        """True while some axis still runs over image positions (not once they are flattened with channels)."""
        return any(a is not None and a.pure for a in self.axes)


def whole(d: DimRF) -> DimRF:
    return DimRF(d.extent, 0, (d.extent - 1) / 2, d.extent, True)


def _step(d: DimRF, g: Geo) -> DimRF:
    if d.whole or g.whole:
        return whole(d)
    return DimRF(d.size + (g.span - 1) * d.jump, d.jump * g.stride, d.start + g.center * d.jump, d.extent)


def input_field(shape: Shape) -> Field | None:
    """The field of the network input (N, C, *spatial): one pixel per unit; None without spatial dims."""
    spatial = shape[2:]
    if not spatial:
        return None
    dims = tuple(DimRF(1, 1, 0, int(n)) for n in spatial)
    axes = (None, None, *(Axis(frozenset({k})) for k in range(len(spatial))))
    return Field(axes, dims, dims)


def _mark(field: Field, dims: set[int], strict_only: bool = False, axes: tuple[Label, ...] | None = None) -> Field:
    """`field` with `dims` made whole (in the strict field only, or in both) and optionally new labels."""
    strict = tuple(whole(d) if k in dims else d for k, d in enumerate(field.strict))
    path = field.path if strict_only else tuple(whole(d) if k in dims else d for k, d in enumerate(field.path))
    return Field(field.axes if axes is None else axes, strict, path)


def _dims_of(labels: list[Label] | tuple[Label, ...]) -> set[int]:
    return {k for a in labels if a is not None for k in a.dims}


def _union(fields: list[tuple[DimRF, ...]]) -> tuple[DimRF, ...]:
    """The union of several fields of the same input (the maximum over the paths into a node)."""
    if len({len(f) for f in fields}) > 1:  # fields of different inputs: nothing local is left
        return tuple(whole(d) for d in fields[0])
    out = []
    for dims in zip(*fields, strict=True):
        if any(d.whole for d in dims):
            out.append(whole(dims[0]))
            continue
        lo = min(d.start - (d.size - 1) / 2 for d in dims)
        hi = max(d.start + (d.size - 1) / 2 for d in dims)
        out.append(DimRF(hi - lo + 1, max(d.jump for d in dims), (lo + hi) / 2, dims[0].extent))
    return tuple(out)


def _global(fields: list[Field], out_shape: Shape, first: Field, first_shape: Shape | None) -> Field:
    """Every position mixes with every other (attention, a recurrence, an op we cannot see into)."""
    axes = first.axes if first_shape is not None and len(first.axes) == len(out_shape) else (None,) * len(out_shape)
    merged = Field(axes, _union([f.strict for f in fields]), _union([f.path for f in fields]))
    return _mark(merged, set(range(len(merged.strict))))


def _broadcast(inputs: list[tuple[Field | None, Shape | None]], out_shape: Shape) -> Field | None:
    """Elementwise ops: labels aligned from the right; an input broadcast over a spatial axis (a gate) joins
    the strict field only."""
    r = len(out_shape)
    labels: list[Label] = [None] * r
    usable = [(f, s) for f, s in inputs if f is not None and s is not None and len(f.axes) == len(s) and len(s) <= r]
    if not usable:
        return None
    for f, s in usable:
        for a in range(1, len(s) + 1):
            if s[-a] == out_shape[-a] and labels[-a] is None:
                labels[-a] = f.axes[-a]

    def gate(s: Shape) -> bool:
        padded = (1,) * (r - len(s)) + tuple(s)
        return any(labels[i] is not None and out_shape[i] > 1 and padded[i] == 1 for i in range(r))

    data = [f for f, s in usable if not gate(s)] or [f for f, _ in usable]
    return Field(tuple(labels), _union([f.strict for f, _ in usable]), _union([f.path for f in data]))


def _merged(src: list[tuple[Label, int]]) -> Label:
    """The label of one axis made by flattening the (label, size) axes `src` (size-1 axes left out)."""
    labels = [a for a, _ in src]
    if all(a is None for a in labels):
        return None
    parts = [a for a in labels if a is not None and a.kind == "part"]
    if (
        len(parts) == len(labels)
        and len({a.dims for a in parts}) == 1
        and [a.part for a in parts] == list(range(parts[0].parts))
    ):
        return Axis(parts[0].dims)  # a split axis put back together in order
    pure = all(a is not None and a.pure for a in labels)
    return Axis(frozenset(_dims_of(labels)), "mix", pure=pure, members=tuple(src))


def _split(label: Label, sizes: list[int]) -> list[Label]:
    """The labels of the axes of `sizes` that one axis labelled `label` is viewed as."""
    if label is None:
        return [None] * len(sizes)
    if label.kind == "mix" and [n for _, n in label.members] == sizes:
        return [a for a, _ in label.members]  # a flattened group viewed back as it was
    if label.kind == "plain":
        return [Axis(label.dims, "part", i, len(sizes)) for i in range(len(sizes))]
    return [Axis(label.dims, "mix", pure=label.pure)] * len(sizes)


def regroup(axes: tuple[Label, ...], in_shape: Shape, out_shape: Shape) -> tuple[Label, ...] | None:
    """Labels after a view/reshape/flatten/squeeze from `in_shape` to `out_shape` (None: not a reshape)."""
    if tuple(in_shape) == tuple(out_shape):
        return tuple(axes)
    ins = [(i, n) for i, n in enumerate(in_shape) if n != 1]
    outs = [(j, n) for j, n in enumerate(out_shape) if n != 1]
    labels: list[Label] = [None] * len(out_shape)
    i = j = 0
    while i < len(ins) and j < len(outs):
        gi, gj = [ins[i]], [outs[j]]
        pi, pj = ins[i][1], outs[j][1]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(ins):
                gi.append(ins[i])
                pi, i = pi * ins[i][1], i + 1
            elif pj < pi and j < len(outs):
                gj.append(outs[j])
                pj, j = pj * outs[j][1], j + 1
            else:
                return None
        src = [(axes[a], n) for a, n in gi]
        sizes = [n for _, n in gj]
        if len(gi) == 1:
            new = [src[0][0]] if len(gj) == 1 else _split(src[0][0], sizes)
        else:
            m = _merged(src)
            new = [m] if len(gj) == 1 else [None if m is None else Axis(m.dims, "mix", pure=m.pure)] * len(gj)
        for (b, _), lab in zip(gj, new, strict=True):
            labels[b] = lab
    if i < len(ins) or j < len(outs):
        return None
    return tuple(labels)


def _shift(field: Field, axis: int, offset: int, step: int = 1) -> Field:
    """Unit 0 of the output is unit `offset` of the input along `axis` (a crop, pad, index or roll)."""
    label = field.axes[axis]
    k = label.dim if label is not None else None
    if k is None:
        return field

    def move(d: DimRF) -> DimRF:
        return d if d.whole else dataclasses.replace(d, start=d.start + offset * d.jump, jump=d.jump * step)

    strict = tuple(move(d) if i == k else d for i, d in enumerate(field.strict))
    path = tuple(move(d) if i == k else d for i, d in enumerate(field.path))
    return Field(field.axes, strict, path)


def _slide(field: Field, in_shape: Shape, geos: list[Geo]) -> Field:
    """A conv/pool/upsample window along the last len(geos) axes."""
    out = field
    for i, g in enumerate(geos):
        a = len(in_shape) - len(geos) + i
        label = field.axes[a]
        if label is None:
            continue
        if label.dim is None:  # a window along a flattened or split axis: neighbours are not neighbours
            out = _mark(out, set(label.dims))
            continue
        k = label.dim
        out = Field(
            out.axes,
            tuple(_step(d, g) if j == k else d for j, d in enumerate(out.strict)),
            tuple(_step(d, g) if j == k else d for j, d in enumerate(out.path)),
        )
    return out


def _along(field: Field, axis: int, rank: int, strict_only: bool = False) -> Field:
    """Mixing along one axis (softmax, a Linear over the last axis): its dims become whole."""
    label = field.axes[axis % rank] if rank else None
    return field if label is None else _mark(field, set(label.dims), strict_only)


def _dims_arg(dim: Any, rank: int) -> list[int]:
    if dim is None:
        return list(range(rank))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return [int(d) % rank for d in dims]


def _reduce(field: Field, op: Op, in_shape: Shape, out_shape: Shape) -> Field:
    rank = len(in_shape)
    dims = _dims_arg(op.attrs.get("dim"), rank)
    marked = _mark(field, _dims_of([field.axes[d] for d in dims]))
    if op.attrs.get("keepdim") and len(out_shape) == rank:
        return marked
    kept = tuple(a for i, a in enumerate(field.axes) if i not in dims)
    return Field(kept if len(kept) == len(out_shape) else (None,) * len(out_shape), marked.strict, marked.path)


def _matmul(inputs: list[tuple[Field | None, Shape | None]], out_shape: Shape) -> Field:
    """a @ b: the contracted axes (a's last, b's second to last) mix; the rest keep their labels."""
    (fa, sa), (fb, sb) = (inputs + [(None, None)])[:2]
    fields = [f for f in (fa, fb) if f is not None]
    mixed: set[int] = set()
    if fa is not None and sa is not None:
        mixed |= _dims_of(fa.axes[-1:])
    if fb is not None and sb is not None and len(sb) >= 2:
        mixed |= _dims_of(fb.axes[-2:-1])
    labels: list[Label] = [None] * len(out_shape)
    if len(out_shape) >= 2 and fa is not None and sa is not None and len(sa) >= 2:
        batch, nb = fa.axes[:-2], len(out_shape) - 2
        for i in range(1, min(len(batch), nb) + 1):
            labels[nb - i] = batch[-i]
        labels[-2] = fa.axes[-2]
    if len(out_shape) >= 2 and fb is not None and sb is not None and len(sb) >= 2:
        labels[-1] = fb.axes[-1]
    merged = Field(tuple(labels), _union([f.strict for f in fields]), _union([f.path for f in fields]))
    return _mark(merged, mixed)


def _permuted(op: Op, args: tuple, rank: int) -> list[int] | None:
    fn = op.attrs.get("fn")
    rest = list(args[1:])
    if fn == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        return [int(d) % rank for d in dims]
    if fn in ("transpose", "swapaxes", "swapdims") and len(rest) >= 2:
        order = list(range(rank))
        a, b = int(rest[0]) % rank, int(rest[1]) % rank
        order[a], order[b] = order[b], order[a]
        return order
    if fn == "t" and rank == 2:
        return [1, 0]
    return None


def _getitem(field: Field, in_shape: Shape | None, index: Any, out_shape: Shape) -> Field | None:
    """Indexing a tensor with ints, slices, None and Ellipsis (an element of a tuple output keeps its field)."""
    if in_shape is None:
        return field if len(field.axes) == len(out_shape) else None
    index = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
        return None  # advanced indexing: no simple map
    real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in index:
        expanded += [slice(None)] * (len(in_shape) - real) if i is Ellipsis else [i]
    expanded += [slice(None)] * (len(in_shape) - sum(1 for i in expanded if i is not None))
    labels: list[Label] = []
    out, axis = field, 0
    for i in expanded:
        if i is None:
            labels.append(None)
            continue
        if isinstance(i, int):
            out = _shift(out, axis, i % in_shape[axis])
        else:
            start, _, step = i.indices(in_shape[axis])
            out = _shift(out, axis, start, step)
            labels.append(field.axes[axis])
        axis += 1
    return Field(tuple(labels), out.strict, out.path) if len(labels) == len(out_shape) else None


def _pad(field: Field, pad: Any, rank: int) -> Field:
    """F.pad's (left, right) pairs from the last axis backwards: unit 0 moves `left` units before the input's."""
    out = field
    for i in range(0, len(pad or ()) - 1, 2):
        out = _shift(out, rank - 1 - i // 2, -int(pad[i]))
    return out


def _roll(field: Field, args: tuple, kwargs: dict, shape: Shape) -> Field | None:
    shifts = args[1] if len(args) > 1 else kwargs.get("shifts", 0)
    dims = args[2] if len(args) > 2 else kwargs.get("dims")
    if dims is None:
        return None  # a roll of the flattened tensor
    shifts = shifts if isinstance(shifts, (list, tuple)) else [shifts]
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    out = field
    for s, d in zip(shifts, dims, strict=True):
        d = int(d) % len(shape)
        out = _shift(out, d, (-int(s)) % shape[d])
    return out


def _free(op: Op, args: tuple, kwargs: dict, inputs: list, out_shape: Shape) -> Field | None:
    """Ops that only move data: permutes, views, indexing, concatenation, padding."""
    fields = [f for f, _ in inputs if f is not None]
    first, shape = next((f, s) for f, s in inputs if f is not None)
    fn = op.attrs.get("fn")
    if fn == "getitem":
        return _getitem(first, shape, args[1], out_shape)
    if shape is None or len(first.axes) != len(shape):
        return first if len(first.axes) == len(out_shape) else None
    rank = len(shape)
    order = _permuted(op, args, rank)
    if order is not None and len(order) == rank:
        return Field(tuple(first.axes[d] for d in order), first.strict, first.path)
    if fn == "cat" and len(out_shape) == rank:
        return Field(first.axes, _union([f.strict for f in fields]), _union([f.path for f in fields]))
    if fn == "stack":
        d = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % len(out_shape)
        axes = (*first.axes[:d], None, *first.axes[d:])
        return Field(axes, _union([f.strict for f in fields]), _union([f.path for f in fields]))
    if fn == "pad":
        pad = op.attrs.get("pad") or (args[1] if len(args) > 1 else kwargs.get("pad"))
        return _pad(first, pad, rank) if len(out_shape) == rank else None
    if fn == "roll":
        return _roll(first, args, kwargs, shape)
    if fn in ("chunk", "split", "tensor_split", "split_with_sizes"):
        return first
    labels = regroup(first.axes, shape, out_shape) if _numel(shape) == _numel(out_shape) else None
    if labels is not None:
        return Field(labels, first.strict, first.path)
    return _broadcast(inputs, out_shape)


def _numel(shape: Shape) -> int:
    n = 1
    for v in shape:
        n *= v
    return n


def _norm(field: Field, op: Op, rank: int) -> Field:
    """Normalisation: the statistics over some axes are a dependency of the strict field only."""
    if "stats_last" in op.attrs:
        axes = range(rank - op.attrs["stats_last"], rank)
    else:
        axes = range(op.attrs.get("stats_from", rank), rank)
    return _mark(field, _dims_of([field.axes[a] for a in axes]), strict_only=True)


def propagate(
    op: Op, args: tuple, kwargs: dict, inputs: list[tuple[Field | None, Shape | None]], out_shape: Shape
) -> Field | None:
    """The field of a node's (first) output from its inputs' fields and shapes (None: no spatial input)."""
    fields = [f for f, _ in inputs if f is not None]
    if not fields:
        return None
    first, shape = next((f, s) for f, s in inputs if f is not None)
    labelled = shape is not None and len(first.axes) == len(shape)
    key = op.key
    if key in ("conv", "pool", "adaptive_pool", "upsample") and labelled:
        geos = geometry(op, shape, out_shape)
        if geos is not None:
            return _slide(first, shape, geos)
    if key == "linear" and labelled:  # over the last axis: an NHWC Linear keeps H and W
        mixed = _along(first, -1, len(shape))
        return Field(first.axes[:-1] + (None,), mixed.strict, mixed.path)
    if key == "matmul":
        return _matmul(inputs, out_shape)
    if key == "softmax" and labelled:
        dim = op.attrs.get("dim")
        if dim is None:  # torch's legacy default
            dim = 0 if len(shape) in (0, 1, 3) else 1
        return _along(first, int(dim), len(shape))
    if key == "norm" and labelled and tuple(shape) == tuple(out_shape):
        return _norm(first, op, len(shape))
    if key == "reduce" and labelled:
        return _reduce(first, op, shape, out_shape)
    if key == "embed" and labelled:
        return Field((*first.axes, None), first.strict, first.path)
    if key in ("act", "bn", "eltwise", "norm"):
        out = _broadcast(inputs, out_shape)
        if out is not None:
            return out
    if key == "free":
        out = _free(op, args, kwargs, inputs, out_shape)
        if out is not None:
            return out
    if key == "opaque" and op.attrs.get("flops", 0) == 0 and labelled and tuple(shape) == tuple(out_shape):
        return first  # moves or rescales values in place, no products between positions
    return _global(fields, out_shape, first, shape)
