"""Compare a spec's closed-form formulas with what calc.graph measures on the modules built from it."""

from typing import Any

from torchdojo.calc.graph import Analysis, Layer, analyze
from torchdojo.calc.spec import MAX_VALUES, Spec, SpecLayer, numel, parse_spec
from torchdojo.errors import DojoError


def _int(v: float) -> float:
    return int(v) if float(v).is_integer() else v


def _rows_of(analysis: Analysis, layer: SpecLayer) -> list[Layer]:
    return [r for r in analysis.layers if r.name.split(".")[0].split(":")[0] == layer.name]


def measured(analysis: Analysis, layer: SpecLayer) -> dict[str, Any]:
    """Params, MACs, FLOPs, output shape and field size measured over the graph rows of one spec layer."""
    rows = _rows_of(analysis, layer)
    last = rows[-1]
    rf = None
    if last.rf is not None and not any(d.whole for d in last.rf):
        rf = tuple(d.size for d in last.rf)
    return {
        "params": sum(r.params for r in rows),
        "macs": sum(r.macs for r in rows),
        "flops": sum(r.flops for r in rows),
        "out": tuple(last.out_shape[1:]),
        "rf": rf,
        "jump": tuple(d.jump for d in last.rf) if rf else None,
    }


def check_spec(spec: Spec | str, batch: int = 1) -> tuple[Spec, Analysis, list[dict[str, Any]]]:
    """Build, measure and compare: one row per (layer, quantity): formula, closed-form value, measured."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DojoError(f"batch must be a whole number >= 1, got {batch!r}", "use --batch 1")
    biggest = max(numel(shape) for shape in (spec.input_shape, *(layer.out_shape for layer in spec.layers)))
    if batch * biggest > 2 * MAX_VALUES:
        raise DojoError(
            f"batch {batch:,} x {biggest:,} values of the largest layer output is more than {2 * MAX_VALUES:,} values",
            f"use a smaller --batch (at most {max(2 * MAX_VALUES // biggest, 1):,} for this spec)",
        )
    analysis = analyze(spec.model, spec.input_shape, batch=batch, name="spec")
    rows = []
    for layer in spec.layers:
        got = measured(analysis, layer)
        label = f"{layer.index}: {layer.text}"

        def add(quantity: str, formula: str, closed: Any, value: Any, label: str = label) -> None:
            rows.append(
                {
                    "layer": label,
                    "quantity": quantity,
                    "formula": formula,
                    "closed_form": closed,
                    "measured": value,
                    "match": closed == value,
                }
            )

        shape = "x".join(map(str, layer.out_shape))
        add("output shape", f"{shape} (per example)", shape, "x".join(map(str, got["out"])))
        for key, f in layer.closed.items():
            if key in ("params", "macs", "flops"):
                add(
                    key if key == "params" else key.upper()[:-1] + "s",
                    f.text(),
                    f.value * batch ** (key != "params"),
                    got[key],
                )
            elif key in ("rf", "rf_w", "jump", "jump_w"):
                dim = 1 if key.endswith("_w") else 0
                which = "receptive field" if key.startswith("rf") else "jump"
                src = got["rf"] if key.startswith("rf") else got["jump"]
                add(which + (" (W)" if dim else ""), f.text(), f.value, _int(src[dim]) if src else None)
            else:  # output sizes, detection depth: the formula and its value against the measured shape
                size = {"Ho": got["out"][1:2], "Ho=Wo": got["out"][1:2], "Wo": got["out"][2:3]}.get(key, got["out"][:1])
                add(key, f.text(), f.value, size[0] if size else None)
        for key in ("params", "macs", "flops"):  # every quantity is checked, zero ones included
            if key not in layer.closed:
                add(key if key == "params" else key.upper()[:-1] + "s", "0", 0, got[key])
    return spec, analysis, rows
