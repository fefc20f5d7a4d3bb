"""Walk a model's torch.fx graph once, on one example batch, and measure every node.

Each node gets its input/output shapes, the parameters it owns (trainable and frozen; a shared module
counts once), MACs and FLOPs (calc.rules), output memory and receptive field (calc.receptive).
"""

import dataclasses
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from torchdojo.calc import receptive
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
    rf: RF
    node: str = ""  # the fx node's name (for gradient_map)

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
    gm: fx.GraphModule = dataclasses.field(repr=False)

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
    def rf(self) -> RF:
        """The receptive field of the last layer that has one."""
        for r in reversed(self.layers):
            if r.rf is not None:
                return r.rf
        return None

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


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's fx graph; a model that cannot be traced raises DojoError naming the layer."""
    if isinstance(model, fx.GraphModule):
        return model
    tracer = _Tracer()
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


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _shares_memory(out: torch.Tensor, ins: list[torch.Tensor]) -> bool:
    """True when `out` is one of `ins` (in-place) or a view of one (flatten, reshape, getitem)."""
    base = out._base if out._base is not None else out
    return any(out is x or base is x or base is x._base for x in ins)


class _Recorder(fx.Interpreter):
    """Runs the graph and measures each node as it goes."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module):
        super().__init__(gm)
        self.layers: list[Layer] = []
        self.fields: dict[str, RF] = {}
        self.seen: set[int] = set()  # ids of parameters already attributed to a layer
        self.pending: dict[str, list[nn.Parameter]] = {}  # get_attr node -> its parameters
        self.current: fx.Node | None = None
        self.calls: dict[str, int] = {}  # a module called twice (a reused ReLU) gets "name:2"

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        in_nodes = n.all_input_nodes
        ins = [t for a in in_nodes for t in _tensors(self.env[a])]
        in_shapes = [tuple(t.shape) for t in ins]  # before the op: in-place ops keep shapes, not values
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
            self.fields[n.name] = receptive.input_rf(tuple(out.shape[1:]))
            return out
        if n.op == "get_attr":
            self.pending[n.name] = [out] if isinstance(out, nn.Parameter) else []
            self.fields[n.name] = None
            return out
        if n.op == "output":
            return out
        outs = _tensors(out)
        if not outs:  # x.size(), x.shape, ...: not a layer
            self.fields[n.name] = None
            return out
        if module is not None:
            kind, owned = type(module).__name__, list(module.parameters())
        else:
            kind = n.target if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))
            owned = []
        owned += [p for a in in_nodes for p in self.pending.get(a.name, [])]
        new = [p for p in owned if id(p) not in self.seen]
        self.seen.update(id(p) for p in new)
        c = cost(op, module, ins, outs[0], args, kwargs)
        field = self._field(op, in_nodes, in_shapes, tuple(outs[0].shape))
        self.fields[n.name] = field
        act = sum(t.numel() * t.element_size() for t in outs if not _shares_memory(t, ins))
        name = str(n.target) if n.op == "call_module" else n.name
        self.calls[name] = self.calls.get(name, 0) + 1
        name += f":{self.calls[name]}" if self.calls[name] > 1 else ""
        self.layers.append(
            Layer(
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
                act_bytes=act,
                rf=field,
            )
        )
        return out

    def _field(
        self, op: Op, in_nodes: list[fx.Node], in_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]
    ) -> RF:
        merged = receptive.merge([self.fields.get(a.name) for a in in_nodes])
        geo = receptive.geometry(op, in_shapes[0] if in_shapes else None, out_shape)
        if op.key == "opaque" and op.attrs["flops"] > 0:
            geo = "global"  # an op we cannot see into that multiplies matrices may mix every position
        return receptive.apply(merged, geo)


def analyze(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1, name: str | None = None) -> Analysis:
    """Measure every layer of `model` on a (batch, *input_shape) input (eval mode, no grad)."""
    gm = trace(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros((batch, *input_shape), device=device, dtype=dtype)
    rec = _Recorder(gm, model)
    modes = {m: m.training for m in model.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            rec.run(x)
    except DojoError:
        raise
    except Exception as e:
        n = rec.current
        where = f"{n.target} ({type(gm.get_submodule(n.target)).__name__})" if n.op == "call_module" else n.name
        raise DojoError(
            f"{name or type(model).__name__} fails on input {'x'.join(map(str, input_shape))} at layer "
            f"{where}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
            "check --input: (C, H, W) without the batch dim, large enough for every kernel and pooling window",
        ) from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    unused = [p for p in model.parameters() if id(p) not in rec.seen]
    if unused:  # defined but never called in forward: still part of the model's parameter count
        n = sum(p.numel() for p in unused)
        rec.layers.append(
            Layer(
                "(unused in forward)",
                "-",
                "free",
                [],
                None,
                n,
                sum(p.numel() for p in unused if p.requires_grad),
                0,
                0,
                True,
                0,
                None,
            )
        )
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Analysis(name or type(model).__name__, tuple(input_shape), batch, rec.layers, total, trainable, gm)
