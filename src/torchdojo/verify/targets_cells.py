"""Targets for the recurrent cells (rnn-cell, reset-cell F2, lipschitz-rnn F3) and the STE (A4).

Cells are nn.Modules built as `(input_size, hidden_size)` with `forward(x (B, I), h (B, H)) -> h' (B, H)`:
- rnn-cell: h' = tanh(W_ih x + b_ih + W_hh h + b_hh), as torch.nn.RNNCell (weight_ih, weight_hh, bias_ih,
  bias_hh);
- reset-cell: h' = tanh(W_ih x + b_ih + W_hh h + b_hh) * sigmoid(W_r x + b_r), the reset gate depending on
  x only (parameters weight_ih, weight_hh, bias_ih, bias_hh, weight_r, bias_r);
- lipschitz-rnn: h' = A h + tanh(W h + U x + b) (parameters A, W, U, b).
Parameters are matched by name (also as a suffix: `candidate.weight_ih`), else by shape in order.

ste: sign with a straight-through gradient, as the course's `Binarize`: forward = +1 where x >= 0 and -1
where x < 0 (sign(0) = +1, so the output is always binary); backward = the incoming gradient where
|x| <= 1 and 0 elsewhere (the derivative of hardtanh, the boundary |x| = 1 included). The submission is a
torch.autograd.Function (`apply(x)`) or an nn.Module built with no arguments (`forward(x)`).
"""

from typing import Any

import torch

from torchdojo.verify.core import Case, Target


def _cell_strategy() -> Any:
    from hypothesis import strategies as st

    @st.composite
    def case(draw: Any) -> Case:
        i, h, b = draw(st.integers(1, 8)), draw(st.integers(1, 8)), draw(st.integers(1, 4))
        return {
            "init": {"input_size": i, "hidden_size": h},
            "shape": {"x": [b, i], "h": [b, h]},
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "seed": draw(st.integers(0, 2**31 - 1)),
        }

    return case()


CELL_EDGES = tuple(
    (label, {"init": {"input_size": i, "hidden_size": h}, "shape": {"x": [b, i], "h": [b, h]}})
    for label, i, h, b in (
        ("batch 1", 4, 6, 1),
        ("one input feature", 1, 5, 3),
        ("one hidden unit", 4, 1, 3),
        ("input wider than hidden", 9, 3, 2),
        ("hidden wider than input", 3, 9, 2),
        ("equal sizes", 5, 5, 2),
    )
)


def _sizes(case: Case) -> tuple[int, int]:
    return case["init"]["input_size"], case["init"]["hidden_size"]


def _elman_params(case: Case) -> dict[str, tuple[int, ...]]:
    i, h = _sizes(case)
    return {"weight_ih": (h, i), "weight_hh": (h, h), "bias_ih": (h,), "bias_hh": (h,)}


def _elman(p: dict[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"])


def _rnn_ref(case: Case, p: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    return _elman(p, *inputs)


def _reset_ref(case: Case, p: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    x, h = inputs
    return _elman(p, x, h) * torch.sigmoid(x @ p["weight_r"].T + p["bias_r"])


def _lipschitz_ref(case: Case, p: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    x, h = inputs
    return h @ p["A"].T + torch.tanh(h @ p["W"].T + x @ p["U"].T + p["b"])


def _reset_params(case: Case) -> dict[str, tuple[int, ...]]:
    i, h = _sizes(case)
    return {**_elman_params(case), "weight_r": (h, i), "bias_r": (h,)}


def _lipschitz_params(case: Case) -> dict[str, tuple[int, ...]]:
    i, h = _sizes(case)
    return {"A": (h, h), "W": (h, h), "U": (h, i), "b": (h,)}


_CELL = "nn.Module: (input_size, hidden_size); forward(x (B, I), h (B, H)) -> h' (B, H)"

RNN_CELL = Target(
    name="rnn-cell",
    reference_name="torch.nn.RNNCell",
    reference=_rnn_ref,
    param_shapes=_elman_params,
    input_names=("x", "h"),
    strategy=_cell_strategy,
    param_scale=0.5,
    edge_cases=CELL_EDGES,
    rules="no-builtin-rnn",
    contract=_CELL,
)

RESET_CELL = Target(
    name="reset-cell",
    reference_name="tanh(W_ih x + b_ih + W_hh h + b_hh) * sigmoid(W_r x + b_r)",
    reference=_reset_ref,
    param_shapes=_reset_params,
    input_names=("x", "h"),
    strategy=_cell_strategy,
    param_scale=0.5,
    edge_cases=CELL_EDGES,
    contract=_CELL,
)

LIPSCHITZ_RNN = Target(
    name="lipschitz-rnn",
    reference_name="A h + tanh(W h + U x + b)",
    reference=_lipschitz_ref,
    param_shapes=_lipschitz_params,
    input_names=("x", "h"),
    strategy=_cell_strategy,
    param_scale=0.5,
    edge_cases=CELL_EDGES,
    contract=_CELL,
)

STE_FILLS = ("randn", "zeros", "boundary", "wide")


def _ste_fill(kind: str, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Input values: 2 * randn, exact zeros, values on and around the clip boundary, or 10 * randn."""
    if kind == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if kind == "boundary":
        grid = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], dtype=dtype)
        return grid[torch.randint(0, len(grid), shape, generator=gen)]
    scale = 10.0 if kind == "wide" else 2.0
    return torch.randn(shape, generator=gen, dtype=dtype) * scale


def _ste_ref(case: Case, p: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    (x,) = inputs
    sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    inside = (x.detach().abs() <= 1).to(x.dtype)  # not clamp: its gradient is 0 at |x| = 1 exactly
    return sign + (x - x.detach()) * inside  # the value is sign(x), the gradient g * [|x| <= 1]


def _ste_strategy() -> Any:
    from hypothesis import strategies as st

    @st.composite
    def case(draw: Any) -> Case:
        shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
        return {
            "init": {},
            "shape": {"x": shape},
            "fill": draw(st.sampled_from(["randn", "boundary", "wide"])),
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "seed": draw(st.integers(0, 2**31 - 1)),
        }

    return case()


STE = Target(
    name="ste",
    reference_name="sign (sign(0) = +1) with the hardtanh straight-through gradient",
    reference=_ste_ref,
    param_shapes=lambda case: {},
    input_names=("x",),
    strategy=_ste_strategy,
    edge_cases=tuple(
        (label, {"init": {}, "shape": {"x": shape}, "fill": fill})
        for label, shape, fill in (
            ("exact zeros (sign(0) = +1)", [3, 4], "zeros"),
            ("on the clip boundary |x| = 1", [4, 7], "boundary"),
            ("large values (gradient 0)", [2, 8], "wide"),
            ("one element", [1], "randn"),
            ("4-D activations", [2, 3, 4, 5], "randn"),
        )
    ),
    kind="function",
    fill=_ste_fill,
    contract="torch.autograd.Function: forward(ctx, x), backward(ctx, g); or an nn.Module() with forward(x)",
)
