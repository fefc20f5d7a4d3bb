"""Walk a model's torch.fx graph once, on one example batch, and measure every node.

Each node gets its input/output shapes, the parameters it owns (trainable and frozen; a shared module
counts once), MACs and FLOPs (calc.rules), output memory and receptive fields (calc.fields). The model is
measured in eval mode unless asked for its training graph; a model fx cannot trace (or whose graph fails
where the model itself runs) is measured by forward hooks on its leaf modules instead (calc.hooks).
"""

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from torchdojo.calc.fields import Field, input_field, propagate
from torchdojo.calc.ops import Op, classify_call, classify_module
from torchdojo.calc.receptive import RF
from torchdojo.calc.rules import cost
from torchdojo.errors import DojoError


@dataclasses.dataclass
class Layer:
    """One measured graph node."""

    name: str
    type: str
    op: str
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...] | None
    params: int
    trainable: int
    macs: int
    flops: int
    counted: bool
    act_bytes: int
    rf: RF  # strict: every dependency of the unit
    node: str = ""  # the fx node's name (for gradient_map)
    rf_path: RF = None  # conv path: without inputs broadcast over the image (gates), as papers quote it
    spatial: bool = False  # the output still runs over image positions
    spatial_axes: tuple[int, ...] = ()  # output axes along input spatial dims 0, 1, ... (NCHW: (2, 3))

    @property
    def frozen(self) -> int:
        return self.params - self.trainable


@dataclasses.dataclass
class Analysis:
    """Every layer of a model on one input shape, and the totals."""

    model: str
    input_shape: tuple[int, ...]
    batch: int
    layers: list[Layer]
    total_params: int
    trainable_params: int
    gm: fx.GraphModule | None = dataclasses.field(default=None, repr=False)  # None when measured by hooks
    mode: str = "eval"  # or "train": which graph was measured
    method: str = "fx graph"  # or "forward hooks"
    note: str = ""  # why the fallback was used (and why there are no receptive fields)
    example_shape: tuple[int, ...] = ()  # the tensor the model ran on, batch included

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.layers)

    @property
    def act_bytes(self) -> int:
        return sum(r.act_bytes for r in self.layers)

    @property
    def uncounted(self) -> list[str]:
        return [f"{r.name} ({r.type})" for r in self.layers if not r.counted]

    @property
    def opaque(self) -> list[str]:
        """Layers without a rule, counted by torch's FlopCounterMode (the matmuls/convs inside them only)."""
        return [f"{r.name} ({r.type})" for r in self.layers if r.op == "opaque"]

    @property
    def last_spatial(self) -> Layer | None:
        """The last layer whose output still runs over image positions (the one the summary reports)."""
        return next((r for r in reversed(self.layers) if r.spatial), None)

    @property
    def rf(self) -> RF:
        """The strict receptive field of the last spatial layer."""
        last = self.last_spatial
        return last.rf if last is not None else None

    def layer(self, name: str) -> Layer:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def flops_of(self, *ops: str) -> int:
        """FLOPs of the layers whose canonical op is one of `ops` (e.g. 'conv', 'linear')."""
        return sum(r.flops for r in self.layers if r.op in ops)


class _Tracer(fx.Tracer):
    """fx.Tracer that remembers which module it was inside when tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.failed_in: list[str] | None = None

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self.stack.append(f"{self.path_of_module(m)} ({type(m).__name__})")
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = list(self.stack)
            raise
        finally:
            self.stack.pop()


class _Root(nn.Module):
    """A built-in layer given as the whole model (nn.LSTM, nn.Conv2d): fx keeps it as one call, as inside
    any network, instead of tracing its internals."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.name = type(layer).__name__
        self.add_module(self.name, layer)

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self, self.name)(x)


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's fx graph; a model that cannot be traced raises DojoError naming the layer."""
    if isinstance(model, fx.GraphModule):
        return model
    tracer = _Tracer()
    if tracer.is_leaf_module(model, ""):
        model = _Root(model)
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = tracer.failed_in[-1] if tracer.failed_in else f"the forward of {type(model).__name__} itself"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DojoError(
            f"cannot trace {type(model).__name__} into a graph: layer {where} failed: {type(e).__name__}: {msg}",
            "calc reads the model's torch.fx graph: remove Python control flow on tensor values (if/while "
            "on a tensor, .item(), data-dependent shapes) from that layer's forward, or describe the network "
            "with --spec",
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a value (a tensor, or nested tuples/lists of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    return []


def shares_memory(out: torch.Tensor, ins: list[torch.Tensor]) -> bool:
    """True when `out` is one of `ins` (in-place) or a view of one (flatten, reshape, getitem)."""
    base = out._base if out._base is not None else out
    return any(out is x or base is x or base is x._base for x in ins)


def _is_spatial(field: Field | None, shape: tuple[int, ...]) -> bool:
    """The output runs over image positions: a spatial axis longer than 1, or one with a local field."""
    if field is None or len(field.axes) != len(shape):
        return False
    axes = [i for i, a in enumerate(field.axes) if a is not None and a.pure]
    return bool(axes) and (any(shape[i] > 1 for i in axes) or not all(d.whole for d in field.path))


def _plain_axes(field: Field | None) -> tuple[int, ...]:
    """The output axes along input dims 0, 1, ... in that order; () unless every input dim has one."""
    if field is None:
        return ()
    where = {a.dim: i for i, a in enumerate(field.axes) if a is not None and a.dim is not None}
    return tuple(where[k] for k in range(len(field.strict))) if len(where) == len(field.strict) else ()


class _Recorder(fx.Interpreter):
    """Runs the graph and measures each node as it goes."""

    def __init__(self, gm: fx.GraphModule, spatial_input: bool):
        super().__init__(gm)
        self.spatial_input = spatial_input  # False for a bare recurrent layer: (T, N, F) has no image dims
        self.layers: list[Layer] = []
        self.fields: dict[str, Field | None] = {}
        self.seen: set[int] = set()  # ids of parameters already attributed to a layer
        self.pending: dict[str, list[nn.Parameter]] = {}  # get_attr node -> its parameters
        self.current: fx.Node | None = None
        self.calls: dict[str, int] = {}  # a module called twice (a reused ReLU) gets "name:2"

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        in_nodes = n.all_input_nodes
        ins = [t for a in in_nodes for t in tensors(self.env[a])]
        in_shapes = [tuple(t.shape) for t in ins]  # before the op: in-place ops keep shapes, not values
        node_shapes = [tuple(self.env[a].shape) if isinstance(self.env[a], torch.Tensor) else None for a in in_nodes]
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        op = None
        if module is not None:
            op = classify_module(module)
        elif n.op in ("call_function", "call_method"):
            op = classify_call(n.op, n.target, args, kwargs)
        if op is not None and op.key == "unknown":
            # no rule for it (attention, a wrapped custom function): let torch's own counter see inside
            # grad on: with autograd off, attention takes fused fast paths the counter cannot see into
            with FlopCounterMode(display=False) as counter, torch.enable_grad():
                out = super().run_node(n)
            out = out.detach() if isinstance(out, torch.Tensor) else out
            op = Op("opaque", {**op.attrs, "flops": counter.get_total_flops()})
        else:
            out = super().run_node(n)
        if n.op == "placeholder":
            spatial = self.spatial_input and isinstance(out, torch.Tensor)
            self.fields[n.name] = input_field(tuple(out.shape)) if spatial else None
            return out
        if n.op == "get_attr":
            self.pending[n.name] = [out] if isinstance(out, nn.Parameter) else []
            self.fields[n.name] = None
            return out
        if n.op == "output":
            return out
        outs = tensors(out)
        if not outs:  # x.size(), x.shape, ...: not a layer
            self.fields[n.name] = None
            return out
        inputs = [(self.fields.get(a.name), shape) for a, shape in zip(in_nodes, node_shapes, strict=True)]
        field = propagate(op, args, kwargs, inputs, tuple(outs[0].shape))
        self.fields[n.name] = field
        self.layers.append(self._layer(n, module, op, ins, in_shapes, outs, args, kwargs, field))
        return out

    def _layer(
        self,
        n: fx.Node,
        module: nn.Module | None,
        op: Op,
        ins: list[torch.Tensor],
        in_shapes: list[tuple[int, ...]],
        outs: list[torch.Tensor],
        args: tuple,
        kwargs: dict,
        field: Field | None,
    ) -> Layer:
        if module is not None:
            kind, owned = type(module).__name__, list(module.parameters())
        else:
            kind = n.target if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))
            owned = []
        owned += [p for a in n.all_input_nodes for p in self.pending.get(a.name, [])]
        new = [p for p in owned if id(p) not in self.seen]
        self.seen.update(id(p) for p in new)
        c = cost(op, module, ins, outs[0], args, kwargs)
        name = str(n.target) if n.op == "call_module" else n.name
        self.calls[name] = self.calls.get(name, 0) + 1
        name += f":{self.calls[name]}" if self.calls[name] > 1 else ""
        return Layer(
            name=name,
            node=n.name,
            type=kind,
            op=op.key,
            in_shapes=in_shapes,
            out_shape=tuple(outs[0].shape),
            params=sum(p.numel() for p in new),
            trainable=sum(p.numel() for p in new if p.requires_grad),
            macs=c.macs,
            flops=c.flops,
            counted=c.counted,
            act_bytes=sum(t.numel() * t.element_size() for t in outs if not shares_memory(t, ins)),
            rf=field.strict if field is not None else None,
            rf_path=field.path if field is not None else None,
            spatial=_is_spatial(field, tuple(outs[0].shape)),
            spatial_axes=_plain_axes(field),
        )


def example_input(model: nn.Module, input_shape: tuple[int, ...], batch: int) -> torch.Tensor:
    """Zeros of shape (batch, *input_shape) on the model's device and dtype; a bare nn.RNN/LSTM/GRU without
    batch_first takes its (T, F) input as (T, batch, F)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    shape = (batch, *input_shape)
    if isinstance(model, nn.RNNBase) and not model.batch_first and len(input_shape) == 2:
        shape = (input_shape[0], batch, input_shape[1])
    return torch.zeros(shape, device=device, dtype=dtype)


def input_hint(model: nn.Module, train: bool = False) -> str:
    """What --input means for this model (for error messages)."""
    if isinstance(model, nn.RNNBase):
        return f"give --input TxF for {type(model).__name__}: sequence length x {model.input_size} input features"
    hint = "check --input: (C, H, W) without the batch dim, large enough for every kernel and pooling window"
    if train:
        hint += "; in training mode BatchNorm needs more than one value per channel (use --batch 2 or more)"
    return hint


@contextlib.contextmanager
def measuring_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put the model in eval (or train) mode for the measurement and give it back as it was: every module's
    mode, and in train mode the buffers (BatchNorm running statistics) the forward updates."""
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()] if train else []
    model.train(train)
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _where(gm: fx.GraphModule, n: fx.Node | None) -> str:
    if n is None:
        return "the input"
    return f"{n.target} ({type(gm.get_submodule(n.target)).__name__})" if n.op == "call_module" else n.name


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        return False
    return True


def analyze(
    model: nn.Module, input_shape: tuple[int, ...], batch: int = 1, name: str | None = None, train: bool = False
) -> Analysis:
    """Measure every layer of `model` on a (batch, *input_shape) input, in eval mode (train=True: the
    training graph, e.g. with auxiliary classifiers), without gradients. The model's modes and buffers are
    left as they were."""
    from torchdojo.calc import hooks

    label = name or type(model).__name__
    x = example_input(model, tuple(input_shape), batch)
    with measuring_mode(model, train):
        try:
            gm = trace(model)
        except DojoError as e:
            return hooks.analyze_hooks(model, x, tuple(input_shape), batch, label, train, e.problem)
        rec = _Recorder(gm, spatial_input=not isinstance(model, (nn.RNNBase, nn.RNNCellBase)))
        try:
            with torch.no_grad():
                rec.run(x)
        except DojoError:
            raise
        except Exception as e:
            where = _where(gm, rec.current)
            problem = f"at layer {where}: {type(e).__name__}: {_first_line(e)}"
            if _runs(model, x):  # the graph bakes in something the real forward does differently
                reason = f"the traced graph fails {problem}, while the model itself runs"
                return hooks.analyze_hooks(model, x, tuple(input_shape), batch, label, train, reason)
            raise DojoError(
                f"{label} fails on input {'x'.join(map(str, input_shape))} {problem}", input_hint(model, train)
            ) from None
    layers = rec.layers
    unused = [p for p in model.parameters() if id(p) not in rec.seen]
    if unused:  # defined but never called in forward: still part of the model's parameter count
        layers.append(unused_row(unused))
    return Analysis(
        label,
        tuple(input_shape),
        batch,
        layers,
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        gm,
        mode="train" if train else "eval",
        example_shape=tuple(x.shape),
    )


def unused_row(params: list[nn.Parameter], name: str = "(unused in forward)") -> Layer:
    """A row holding parameters no measured layer owns, so the table still sums to the model's count."""
    return Layer(
        name=name,
        type="-",
        op="free",
        in_shapes=[],
        out_shape=None,
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        macs=0,
        flops=0,
        counted=True,
        act_bytes=0,
        rf=None,
    )
