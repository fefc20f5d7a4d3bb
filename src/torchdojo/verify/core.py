"""What a target is, and how one property of one case is judged: parent-side comparison and tallies.

A case is plain JSON: {"label", "init" (constructor keywords), "shape" (one input shape per input), "dtype",
"seed"} plus, for some targets, "args" (non-tensor arguments after the tensors) and "fill" (how input values
are drawn). Per case, every property (parameters found, forward, the gradient of each input and parameter)
passes when |ours - torch| <= tol * (1 + |torch|) element-wise and the dtype is the reference's. This module
never imports a submission: the child process (`torchdojo.verify.child`) runs it and returns tensors, and the
parent compares them here with what the reference computed.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
Case = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Target:
    """What `check NAME` verifies: the reference, how the submission is called, and how to draw cases.

    `kind` is "module" (the submission is an nn.Module built with the case's "init" keywords, its parameters
    set to the reference's) or "function" (an autograd.Function called as `apply(*inputs, *args)`; an
    nn.Module is accepted too when `init` builds it). `reference(case, params, inputs)` computes the
    reference output in the parent. `rules` names the rule set of `torchdojo.verify.rules` (None: no rule).
    """

    name: str
    reference_name: str  # e.g. "torch.nn.Conv2d", for messages
    reference: Callable[[Case, dict[str, torch.Tensor], list[torch.Tensor]], torch.Tensor]
    param_shapes: Callable[[Case], dict[str, tuple[int, ...]]]  # the reference's parameters, in order
    input_names: tuple[str, ...]  # the tensor arguments, in order
    strategy: Callable[[], Any]  # () -> a hypothesis strategy drawing cases
    edge_cases: tuple[tuple[str, Case], ...]  # (label, case without dtype/seed)
    kind: str = "module"
    param_scale: float = 1.0  # reference weights are randn * param_scale
    rules: str | None = None
    contract: str = ""  # one line: what the submission must look like
    fill: Callable[[str, tuple[int, ...], torch.Generator, torch.dtype], torch.Tensor] | None = None

    def param_names(self, case: Case) -> tuple[str, ...]:
        """The reference's parameter names for this case."""
        return tuple(self.param_shapes(case))

    def properties(self) -> list[str]:
        """Numeric property names in report order (the rules come after them)."""
        params = self.param_shapes(self.edge_cases[0][1])
        return [
            *(["parameters"] if self.kind == "module" else []),
            "forward",
            *(f"grad {n}" for n in self.input_names),
            *(f"grad {n}" for n in params),
        ]


@dataclasses.dataclass
class Outcome:
    ok: bool
    err: float | None = None  # max |ours - torch| when both could be computed
    msg: str | None = None


@dataclasses.dataclass
class Tally:
    """One property over all cases: counts, worst error per dtype, first failing case."""

    name: str
    runs: int = 0
    passed: int = 0
    worst: dict[str, float] = dataclasses.field(default_factory=dict)
    first_failure: tuple[Case, str] | None = None

    def add(self, outcome: Outcome, case: Case) -> None:
        self.runs += 1
        self.passed += outcome.ok
        if outcome.err is not None:
            self.worst[case["dtype"]] = max(self.worst.get(case["dtype"], 0.0), outcome.err)
        if not outcome.ok and self.first_failure is None:
            self.first_failure = (case, outcome.msg or "mismatch")

    @property
    def ok(self) -> bool:
        return self.runs > 0 and self.passed == self.runs


def compare(ours: Any, ref: torch.Tensor, tol: float, what: str) -> Outcome:
    """Element-wise |ours - ref| <= tol * (1 + |ref|) and the same dtype; the message names the first mismatch."""
    if ours is None:
        return Outcome(
            False,
            None,
            f"no gradient reached {what} (is the output detached from it, e.g. rebuilt "
            "with torch.tensor(), .item(), .detach() or .data?)",
        )
    if not isinstance(ours, torch.Tensor):
        return Outcome(False, None, f"{what} is a {type(ours).__name__}, expected a tensor")
    if tuple(ours.shape) != tuple(ref.shape):
        return Outcome(False, None, f"{what} has shape {tuple(ours.shape)}, torch gives {tuple(ref.shape)}")
    if not ours.dtype.is_floating_point:
        return Outcome(False, None, f"{what} has dtype {str(ours.dtype)[6:]}, torch gives {str(ref.dtype)[6:]}")
    a, b = ours.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(a).all():
        return Outcome(False, float("inf"), f"{what} contains NaN or inf")
    diff = (a - b).abs()
    err = diff.max().item() if diff.numel() else 0.0
    if ours.dtype != ref.dtype:
        return Outcome(
            False, err, f"{what} has dtype {str(ours.dtype)[6:]}, torch gives {str(ref.dtype)[6:]} (values aside)"
        )
    bad = diff > tol * (1 + b.abs())
    if not bad.any():
        return Outcome(True, err)
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    return Outcome(
        False,
        err,
        f"{what}: max |diff| {err:.3g} (tol {tol:g}); first mismatch at index {idx}: "
        f"ours {a[idx].item():.6g}, torch {b[idx].item():.6g}",
    )


def init_kwargs(case: Case) -> dict[str, Any]:
    """The constructor keywords of a case (JSON lists become tuples, as a student would write them)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in case.get("init", {}).items()}


def describe_call(cls_name: str, init: dict[str, Any]) -> str:
    """'Conv2d(in_channels=2, kernel_size=(3, 3))'."""
    return f"{cls_name}({', '.join(f'{k}={v!r}' for k, v in init.items())})"


def describe_case(cls_name: str, target: Target, case: Case) -> str:
    """A one-line, human-readable configuration."""
    shapes = ", ".join(f"{n} {tuple(case['shape'][n])}" for n in target.input_names)
    label = f'edge case "{case["label"]}": ' if case.get("label") else ""
    if target.kind == "function":
        args = "".join(f", {a!r}" for a in case.get("args", []))
        call = f"{cls_name}.apply({', '.join(target.input_names)}{args})"
    else:
        call = describe_call(cls_name, init_kwargs(case))
    fill = f", values {case['fill']}" if case.get("fill") else ""
    return f"{label}{call} on {shapes}, {case['dtype']}, seed {case['seed']}{fill}"
