"""Parent side of a check: draw the cases, make their tensors, and compute the reference on them.

Everything here runs in the grader's own process and never sees the submission. The same seed always
gives the same cases and the same values, so a student's `check` (the public seeds) and an instructor's
`grade --seed N` (hidden seeds) draw over the same properties. A case's own value seed (shown in feedback,
to reproduce it) is a hash of the grading seed, never the grading seed plus an offset.
"""

import dataclasses
import hashlib
from collections.abc import Sequence

import torch

from torchdojo.verify.core import TOLERANCE, Case, Target

PUBLIC_SEEDS: tuple[int, ...] = (0,)  # what `torchdojo check` uses unless --seed is given
SEED_SCHEME = "blake2b-v1"  # how edge-case seeds are derived; part of a grading's cache key


@dataclasses.dataclass
class Prepared:
    """One case's tensors (sent to the child) and the reference's results (kept in the parent)."""

    case: Case
    params: dict[str, torch.Tensor]
    inputs: list[torch.Tensor]
    grad_out: torch.Tensor | None  # None when the reference rejects the case
    ref_out: torch.Tensor | None
    ref_grads: dict[str, torch.Tensor]
    invalid: str | None = None  # why the reference itself rejects the case


def edge_seed(seed: int, index: int, target: str) -> int:
    """The value seed of edge case `index` (label x dtype) of `target` under grading seed `seed`.

    A hash, so a case's seed (which feedback shows, to reproduce it) gives no arithmetic way back to the
    grading seed; only trying every candidate seed does, which a large random grading seed defeats.
    In [0, 2**31), like the seeds hypothesis draws.
    """
    digest = hashlib.blake2b(f"{seed}/{index}/{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 33


def draw_cases(target: Target, seeds: Sequence[int], max_examples: int) -> list[Case]:
    """Per seed: every named edge case in float32 and float64, then `max_examples` hypothesis draws."""
    cases: list[Case] = []
    for seed in seeds:
        for i, (label, base) in enumerate(target.edge_cases):
            for j, dtype in enumerate(TOLERANCE):
                cases.append({"label": label, **base, "dtype": dtype, "seed": edge_seed(seed, 2 * i + j, target.name)})
        if max_examples > 0:
            cases += _drawn(target, seed, max_examples)
    return cases


def _drawn(target: Target, seed: int, n: int) -> list[Case]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    out: list[Case] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(target.strategy())
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out[:n]


def _input(target: Target, name: str, shape: tuple[int, ...], case: Case, gen: torch.Generator) -> torch.Tensor:
    dtype = getattr(torch, case["dtype"])
    if target.fill is not None:
        return target.fill(case.get("fill", "randn"), shape, gen, dtype)
    return torch.randn(shape, generator=gen, dtype=dtype)


def prepare(target: Target, case: Case) -> Prepared:
    """The case's parameters, inputs and output gradient (all from its seed), and the reference's answers."""
    dtype = getattr(torch, case["dtype"])
    gen = torch.Generator().manual_seed(int(case["seed"]))
    params = {
        n: torch.randn(s, generator=gen, dtype=dtype) * target.param_scale for n, s in target.param_shapes(case).items()
    }
    inputs = [_input(target, n, tuple(case["shape"][n]), case, gen) for n in target.input_names]
    leaves = {n: t.clone().requires_grad_() for n, t in params.items()}
    ins = [t.clone().requires_grad_() for t in inputs]
    try:
        y = target.reference(case, leaves, ins)
    except (ValueError, TypeError, RuntimeError) as e:
        reason = f"invalid case: {target.reference_name} itself rejects it ({type(e).__name__}: {e})"
        return Prepared(case, params, inputs, None, None, {}, reason)
    g = torch.randn(y.shape, generator=gen, dtype=dtype)
    (y * g).sum().backward()
    grads = {n: t.grad for n, t in zip(target.input_names, ins, strict=True)}
    grads.update({n: t.grad for n, t in leaves.items()})
    zero = {n: torch.zeros_like(t) for n, t in [*zip(target.input_names, ins, strict=True), *leaves.items()]}
    return Prepared(
        case, params, inputs, g, y.detach(), {n: grads[n] if grads[n] is not None else zero[n] for n in grads}
    )
