"""Measure a model that torch.fx cannot trace: forward hooks on its leaf modules, during one real forward.

Data-dependent control flow (an `if` on a tensor value, a loop over a tensor's length) has no static
graph, but the model still runs: each leaf module call is recorded with its shapes, the parameters it owns
and its MACs/FLOPs by the same rules as the graph pass. What a hook cannot see is listed in the summary:
functional ops between modules (F.relu, torch.cat, x.mean, a functional conv) are not measured, and there
are no receptive fields (they need the graph's connectivity).
"""

from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from torchdojo.calc.graph import Analysis, Layer, input_hint, shares_memory, tensors, unused_row
from torchdojo.calc.ops import Op, classify_module
from torchdojo.calc.rules import cost
from torchdojo.errors import DojoError


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Built-in torch.nn layers and modules without children, outermost first, by their dotted names."""
    tracer = fx.Tracer()
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, m: nn.Module) -> None:
        container = isinstance(m, (nn.ModuleList, nn.ModuleDict))  # never called itself: look inside
        if not container and (tracer.is_leaf_module(m, prefix) or not list(m.children())):
            found.append((prefix or type(m).__name__, m))
            return
        for child, sub in m.named_children():
            walk(f"{prefix}.{child}" if prefix else child, sub)

    walk("", model)
    return found


class _Hooks:
    """Records one Layer per leaf module call."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.seen: set[int] = set()
        self.calls: dict[str, int] = {}
        self.current: str | None = None
        self.pending: list[tuple[list[tuple[int, ...]], FlopCounterMode | None]] = []

    def pre(self, name: str, m: nn.Module, args: tuple, kwargs: dict) -> None:
        self.current = f"{name} ({type(m).__name__})"
        shapes = [tuple(t.shape) for t in tensors(list(args)) + tensors(list(kwargs.values()))]
        counter = None
        if classify_module(m).key == "unknown":  # no rule: torch's counter sees the convs/matmuls inside
            counter = FlopCounterMode(display=False)
            counter.__enter__()
        self.pending.append((shapes, counter))

    def post(self, name: str, m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        in_shapes, counter = self.pending.pop()
        op = classify_module(m)
        if counter is not None:
            counter.__exit__(None, None, None)
            op = Op("opaque", {**op.attrs, "flops": counter.get_total_flops()})
        ins = tensors(list(args)) + tensors(list(kwargs.values()))
        outs = tensors(output)
        new = [p for p in m.parameters() if id(p) not in self.seen]
        self.seen.update(id(p) for p in new)
        c = cost(op, m, ins, outs[0] if outs else None, args, kwargs)
        self.calls[name] = self.calls.get(name, 0) + 1
        label = name + (f":{self.calls[name]}" if self.calls[name] > 1 else "")
        self.layers.append(
            Layer(
                name=label,
                type=type(m).__name__,
                op=op.key,
                in_shapes=in_shapes,
                out_shape=tuple(outs[0].shape) if outs else None,
                params=sum(p.numel() for p in new),
                trainable=sum(p.numel() for p in new if p.requires_grad),
                macs=c.macs,
                flops=c.flops,
                counted=c.counted,
                act_bytes=sum(t.numel() * t.element_size() for t in outs if not shares_memory(t, ins)),
                rf=None,
            )
        )


def analyze_hooks(
    model: nn.Module,
    x: torch.Tensor,
    input_shape: tuple[int, ...],
    batch: int,
    label: str,
    train: bool,
    reason: str,
) -> Analysis:
    """Per-leaf shapes, params and MACs of one forward of `model` on `x` (the caller set the mode)."""
    rec = _Hooks()
    handles = []
    for name, m in leaf_modules(model):
        handles.append(m.register_forward_pre_hook(lambda mod, a, k, n=name: rec.pre(n, mod, a, k), with_kwargs=True))
        handles.append(
            m.register_forward_hook(lambda mod, a, k, o, n=name: rec.post(n, mod, a, k, o), with_kwargs=True)
        )
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DojoError(
            f"{label} fails on input {'x'.join(map(str, input_shape))} at layer {rec.current or 'the input'}: "
            f"{type(e).__name__}: {msg}",
            input_hint(model, train),
        ) from None
    finally:
        for h in handles:
            h.remove()
        for _, counter in rec.pending:  # a layer that raised never reached its post hook
            if counter is not None:
                counter.__exit__(None, None, None)
    layers = rec.layers
    rest = [p for p in model.parameters() if id(p) not in rec.seen]
    if rest:
        layers.append(unused_row(rest, "(outside leaf modules, or unused)"))
    note = (
        f"{reason}. Measured by forward hooks on the leaf modules instead: functional ops between modules "
        "are not counted, and receptive fields are not available (they need the graph)"
    )
    return Analysis(
        label,
        tuple(input_shape),
        batch,
        layers,
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        None,
        mode="train" if train else "eval",
        method="forward hooks",
        note=note,
        example_shape=tuple(x.shape),
    )
