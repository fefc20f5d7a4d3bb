"""The parity suite: run a submission and its PyTorch reference on the same weights and inputs.

A case is plain JSON: {"label", "init" (constructor keywords), "shape" (one input shape per forward
argument), "dtype", "seed"}. Per case, every property (parameters found, forward, the gradient of each
input and of each parameter) passes when |ours - torch| <= tol * (1 + |torch|) element-wise. Nothing the
submission does (raising, printing, returning junk) escapes as a crash: each becomes a failed property.
"""

import contextlib
import dataclasses
import io
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchdojo.verify.load import describe_exception

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
Case = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Target:
    """What `check NAME` verifies: the reference module, the constructor, and how to draw cases."""

    name: str
    reference: str  # e.g. "torch.nn.Conv2d", for messages
    make_reference: Callable[[dict[str, Any]], nn.Module]
    param_names: tuple[str, ...]  # the reference's parameters, in order
    input_names: tuple[str, ...]  # forward's arguments, in order
    strategy: Callable[[], Any]  # () -> a hypothesis strategy drawing cases
    edge_cases: tuple[tuple[str, Case], ...]  # (label, case without dtype/seed)
    param_scale: float = 1.0  # reference weights are randn * param_scale

    def properties(self) -> list[str]:
        """Property names in report order."""
        return [
            "parameters",
            "forward",
            *(f"grad {n}" for n in self.input_names),
            *(f"grad {n}" for n in self.param_names),
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


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow the submission's prints and warnings so the report stays readable."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def compare(ours: Any, ref: torch.Tensor, tol: float, what: str) -> Outcome:
    """Element-wise |ours - ref| <= tol * (1 + |ref|); the message names the first mismatching index."""
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
    note = f" ({what} is {str(ours.dtype)[6:]}, torch gives {str(ref.dtype)[6:]})" if ours.dtype != ref.dtype else ""
    a, b = ours.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(a).all():
        return Outcome(False, float("inf"), f"{what} contains NaN or inf{note}")
    diff = (a - b).abs()
    err = diff.max().item() if diff.numel() else 0.0
    bad = diff > tol * (1 + b.abs())
    if not bad.any():
        return Outcome(True, err)
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    return Outcome(
        False,
        err,
        f"{what}: max |diff| {err:.3g} (tol {tol:g}); first mismatch at index {idx}: "
        f"ours {a[idx].item():.6g}, torch {b[idx].item():.6g}{note}",
    )


def match_parameters(sub: nn.Module, ref: nn.Module, reference: str) -> tuple[dict[str, nn.Parameter], list[str]]:
    """Pair torch's parameters with the submission's: same name and shape, else same shape in order."""
    ours = list(sub.named_parameters())
    ref_names = {n for n, _ in ref.named_parameters()}
    pairs: dict[str, nn.Parameter] = {}
    problems: list[str] = []
    used: set[int] = set()
    if not ours:
        return pairs, [
            "the module has no nn.Parameter (register weights with nn.Parameter so optimizers and state_dict see them)"
        ]
    for name, rp in ref.named_parameters():
        cand = next((p for n, p in ours if n == name and p.shape == rp.shape), None)
        if cand is None:
            cand = next((p for n, p in ours if id(p) not in used and n not in ref_names and p.shape == rp.shape), None)
        if cand is None:
            same = dict(ours).get(name)
            problems.append(
                f"{name} has shape {tuple(same.shape)}, {reference} uses {tuple(rp.shape)}"
                if same is not None
                else f"no parameter of shape {tuple(rp.shape)} for {name} ({reference} has one); "
                f"found {', '.join(f'{n} {tuple(p.shape)}' for n, p in ours)}"
            )
            continue
        used.add(id(cand))
        pairs[name] = cand
    return pairs, problems


def _init_kwargs(case: Case) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in case["init"].items()}


def evaluate(cls: type, target: Target, case: Case, path: Path | None = None) -> dict[str, Outcome]:
    """Run one case through the submission and the reference; an Outcome per property."""
    props, out = target.properties(), {}
    dtype, tol = getattr(torch, case["dtype"]), TOLERANCE[case["dtype"]]

    def fail_rest(msg: str) -> dict[str, Outcome]:
        for p in props:
            out.setdefault(p, Outcome(False, None, msg))
        return out

    gen = torch.Generator().manual_seed(case["seed"])
    init = _init_kwargs(case)
    try:
        ref = target.make_reference(init).to(dtype)
    except (ValueError, TypeError, RuntimeError) as e:
        return fail_rest(f"invalid case: {target.reference} itself rejects it ({describe_exception(e)})")
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * target.param_scale)
    try:
        with quiet():
            sub = cls(**init).to(dtype)
    except (Exception, SystemExit) as e:
        return fail_rest(f"constructor {describe_call(cls.__name__, init)} raised {describe_exception(e, path)}")
    pairs, problems = match_parameters(sub, ref, target.reference)
    out["parameters"] = Outcome(not problems, None, "; ".join(problems) or None)
    ref_params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, p in pairs.items():
            p.copy_(ref_params[name])
    inputs = [torch.randn(case["shape"][n], generator=gen, dtype=dtype) for n in target.input_names]
    ref_in = [t.clone().requires_grad_() for t in inputs]
    sub_in = [t.clone().requires_grad_() for t in inputs]
    try:
        y_ref = ref(*ref_in)
    except RuntimeError as e:
        return fail_rest(f"invalid case: {target.reference} itself rejects it ({describe_exception(e)})")
    try:
        with quiet():
            y = sub(*sub_in)
    except (Exception, SystemExit) as e:
        return fail_rest(f"forward raised {describe_exception(e, path)}")
    out["forward"] = compare(y, y_ref, tol, "output")
    if not isinstance(y, torch.Tensor) or y.shape != y_ref.shape:
        return fail_rest("not checked: the forward output is wrong (see forward)")
    g = torch.randn(y_ref.shape, generator=gen, dtype=dtype)
    (y_ref * g).sum().backward()
    try:
        with quiet():
            (y * g.to(y.dtype)).sum().backward()
    except (Exception, SystemExit) as e:
        return fail_rest(f"backward raised {describe_exception(e, path)}")
    for name, t_sub, t_ref in zip(target.input_names, sub_in, ref_in, strict=True):
        out[f"grad {name}"] = compare(t_sub.grad, t_ref.grad, tol, f"dL/d{name}")
    for name, rp in ref_params.items():
        sp = pairs.get(name)
        out[f"grad {name}"] = (
            compare(sp.grad, rp.grad, tol, f"dL/d{name}")
            if sp is not None
            else Outcome(False, None, f"no parameter matches {name} (see parameters)")
        )
    return out


def describe_call(cls_name: str, init: dict[str, Any]) -> str:
    """'Conv2d(in_channels=2, kernel_size=(3, 3))'."""
    return f"{cls_name}({', '.join(f'{k}={v!r}' for k, v in init.items())})"


def describe_case(cls_name: str, target: Target, case: Case) -> str:
    """A one-line, human-readable configuration."""
    shapes = ", ".join(f"{n} {tuple(case['shape'][n])}" for n in target.input_names)
    label = f'edge case "{case["label"]}": ' if case.get("label") else ""
    call = describe_call(cls_name, _init_kwargs(case))
    return f"{label}{call} on {shapes}, {case['dtype']}, seed {case['seed']}"


def run_suite(
    cls: type,
    target: Target,
    path: Path | None = None,
    examples: int = 200,
    seed: int = 0,
    only: Case | None = None,
) -> tuple[list[Tally], int, int]:
    """Edge cases in both dtypes, then `examples` hypothesis-drawn cases; (tallies, n_edge, n_random)."""
    tallies = {p: Tally(p) for p in target.properties()}

    def record(case: Case) -> None:
        try:
            outcomes = evaluate(cls, target, case, path)
        except (Exception, SystemExit) as e:  # whatever the submission did, report it and go on
            outcomes = {p: Outcome(False, None, f"checking raised {describe_exception(e, path)}") for p in tallies}
        for p, o in outcomes.items():
            tallies[p].add(o, case)

    if only is not None:
        record(only)
        return list(tallies.values()), 0, 0
    n_edge = 0
    for label, base in target.edge_cases:
        for dtype in TOLERANCE:
            record({"label": label, **base, "dtype": dtype, "seed": seed + n_edge})
            n_edge += 1
    n_random = 0
    if examples > 0:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hypothesis_seed

        @hypothesis_seed(seed)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=False,
        )
        @given(target.strategy())
        def drawn(case: Case) -> None:
            nonlocal n_random
            n_random += 1
            record(case)

        drawn()
    return list(tallies.values()), n_edge, n_random


def format_report(
    tallies: list[Tally], target: Target, spec: str, cls_name: str, n_edge: int, n_random: int, seed: int
) -> str:
    """The text `torchdojo check` prints: one line per property, details under each failure."""
    total = tallies[0].runs if tallies else 0
    lines = [
        f"torchdojo check {target.name}: {spec} against {target.reference}",
        f"  {total} configurations"
        + (
            f": {n_edge} named edge cases (float32 and float64) + {n_random} random (hypothesis, seed {seed})"
            if n_edge or n_random
            else " (one --case)"
        ),
        "  pass when |ours - torch| <= tol * (1 + |torch|) element-wise, tol = "
        + ", ".join(f"{v:g} ({k})" for k, v in TOLERANCE.items()),
        "",
    ]
    width = max(len(t.name) for t in tallies)
    shown = None  # the last case printed in full: a property failing on it again only names its problem
    for t in tallies:
        worst = ", ".join(f"{k} {v:.2g}" for k, v in sorted(t.worst.items()))
        lines.append(
            f"{'PASS' if t.ok else 'FAIL'}  {t.name:<{width}}  {t.passed}/{t.runs} passed"
            + (f"  worst |diff|: {worst}" if worst else "")
        )
        if t.first_failure is not None:
            case, msg = t.first_failure
            repro = json.dumps(case, separators=(", ", ": "))
            if repro == shown:
                lines += [f"      first failing: the configuration above; problem: {msg}"]
                continue
            shown = repro
            lines += [
                f"      first failing: {describe_case(cls_name, target, case)}",
                f"      problem: {msg}",
                f"      reproduce: torchdojo check {target.name} {spec} --case '{repro}'",
            ]
    failed = [t.name for t in tallies if not t.ok]
    lines += [
        "",
        f"{len(tallies) - len(failed)}/{len(tallies)} properties pass"
        + (f"; failing: {', '.join(failed)}" if failed else ""),
    ]
    return "\n".join(lines)
