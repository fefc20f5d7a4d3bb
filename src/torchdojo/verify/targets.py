"""What `torchdojo check` can verify: every hand-written layer of the course, each with its contract.

Convolutions (A1-A3) are here; the recurrent cells and the straight-through estimator are in
`targets_cells`. Each target gives the constructor or call the course asks for, a hypothesis strategy for
random configurations, named edge cases, and a reference computed with torch in the grader's process.
Conv targets draw scalar stride/padding and (kh, kw) kernels, exactly the A1 constructor
`(in_channels, out_channels, kernel_size, stride, padding)`.
"""

from typing import Any

import torch
import torch.nn.functional as F

from torchdojo.verify.core import Case, Target


def _conv_case(cin: int, cout: int, k: tuple[int, int], s: int, p: int, x: tuple[int, int, int, int]) -> Case:
    return {
        "init": {"in_channels": cin, "out_channels": cout, "kernel_size": list(k), "stride": s, "padding": p},
        "shape": {"x": list(x)},
    }


def _conv_draw(draw: Any, kmax: int, smax: int, pmax: int, transpose: bool) -> Case:
    from hypothesis import strategies as st

    cin, cout = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, kmax)), draw(st.integers(1, kmax))
    s, p = draw(st.integers(1, smax)), draw(st.integers(0, pmax))
    if transpose:  # output (n - 1) * s - 2p + k must be >= 1, i.e. n >= ceil((2p - k + 1) / s) + 1
        h0, w0 = max(1, -(-(2 * p - kh + 1) // s) + 1), max(1, -(-(2 * p - kw + 1) // s) + 1)
        h, w = draw(st.integers(h0, h0 + 5)), draw(st.integers(w0, w0 + 5))
    else:  # the smallest input the kernel fits once padded
        h0, w0 = max(1, kh - 2 * p), max(1, kw - 2 * p)
        h, w = draw(st.integers(h0, h0 + 7)), draw(st.integers(w0, w0 + 7))
    c = _conv_case(cin, cout, (kh, kw), s, p, (draw(st.integers(1, 3)), cin, h, w))
    return {**c, "dtype": draw(st.sampled_from(["float32", "float64"])), "seed": draw(st.integers(0, 2**31 - 1))}


def _strategy(kmax: int, smax: int, pmax: int, transpose: bool, as_function: bool = False) -> Any:
    from hypothesis import strategies as st

    def draw_case(draw: Any) -> Case:
        case = _conv_draw(draw, kmax, smax, pmax, transpose)
        return _as_function(case) if as_function else case

    return st.composite(draw_case)()


def _conv_params(case: Case, transpose: bool = False) -> dict[str, tuple[int, ...]]:
    i = case["init"]
    cin, cout, (kh, kw) = i["in_channels"], i["out_channels"], i["kernel_size"]
    return {"weight": (cin, cout, kh, kw) if transpose else (cout, cin, kh, kw), "bias": (cout,)}


def _conv2d_ref(case: Case, params: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    i = case["init"]
    return F.conv2d(inputs[0], params["weight"], params["bias"], i["stride"], i["padding"])


def _conv_transpose_ref(case: Case, params: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    i = case["init"]
    return F.conv_transpose2d(inputs[0], params["weight"], params["bias"], i["stride"], i["padding"])


def _as_function(case: Case) -> Case:
    """A conv2d case recast for conv2d-backward: weight and bias become inputs, stride and padding args."""
    i = case["init"]
    w = _conv_params(case)
    out = {k: v for k, v in case.items() if k not in ("init", "shape")}
    return {
        **out,
        "init": {},
        "shape": {"x": case["shape"]["x"], "weight": list(w["weight"]), "bias": list(w["bias"])},
        "args": [i["stride"], i["padding"]],
    }


def _conv_function_ref(case: Case, params: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    x, w, b = inputs
    stride, padding = case["args"]
    return F.conv2d(x, w, b, stride, padding)


CONV_EDGES = (
    ("batch 1", _conv_case(3, 4, (3, 3), 1, 1, (1, 3, 6, 6))),
    ("one channel", _conv_case(1, 1, (3, 3), 1, 0, (2, 1, 5, 5))),
    ("non-square input and kernel", _conv_case(2, 3, (2, 4), 1, 0, (2, 2, 5, 9))),
    ("non-square, stride 2 and padding 1", _conv_case(2, 3, (3, 2), 2, 1, (2, 2, 7, 4))),
    ("stride larger than the kernel", _conv_case(2, 2, (2, 2), 3, 0, (2, 2, 8, 7))),
    ("padding larger than the kernel", _conv_case(2, 2, (2, 3), 1, 4, (2, 2, 3, 3))),
    ("kernel equal to the input", _conv_case(2, 3, (5, 5), 1, 0, (2, 2, 5, 5))),
    ("kernel equal to the input, non-square", _conv_case(1, 2, (3, 6), 2, 0, (3, 1, 3, 6))),
    ("1x1 kernel", _conv_case(4, 2, (1, 1), 1, 0, (2, 4, 3, 5))),
)

CONV2D = Target(
    name="conv2d",
    reference_name="torch.nn.Conv2d",
    reference=_conv2d_ref,
    param_shapes=_conv_params,
    input_names=("x",),
    strategy=lambda: _strategy(5, 4, 3, False),
    param_scale=0.5,
    edge_cases=CONV_EDGES,
    rules="no-builtin-conv",
    contract="nn.Module: (in_channels, out_channels, kernel_size=(kh, kw), stride=int, padding=int); forward(x)",
)

CONV2D_BACKWARD = Target(
    name="conv2d-backward",
    reference_name="autograd through torch.nn.functional.conv2d",
    reference=_conv_function_ref,
    param_shapes=lambda case: {},
    input_names=("x", "weight", "bias"),
    strategy=lambda: _strategy(5, 4, 3, False, as_function=True),
    edge_cases=(
        ("the 3x3 image and 2x2 kernel of A2", _as_function(_conv_case(1, 1, (2, 2), 1, 0, (1, 1, 3, 3)))),
        *((label, _as_function(case)) for label, case in CONV_EDGES),
    ),
    kind="function",
    rules="no-builtin-conv",
    contract="torch.autograd.Function: forward(ctx, x, weight, bias, stride: int, padding: int, [more with defaults]), "
    "backward(ctx, gy)",
)

CONV_TRANSPOSE = Target(
    name="conv-transpose",
    reference_name="torch.nn.ConvTranspose2d",
    reference=_conv_transpose_ref,
    param_shapes=lambda case: _conv_params(case, transpose=True),
    input_names=("x",),
    strategy=lambda: _strategy(4, 3, 2, True),
    param_scale=0.5,
    edge_cases=(
        ("the 2x2 worked example (A3)", _conv_case(1, 1, (2, 2), 1, 0, (1, 1, 2, 2))),
        ("batch 1", _conv_case(3, 2, (3, 3), 2, 1, (1, 3, 4, 4))),
        ("one channel", _conv_case(1, 1, (3, 3), 1, 0, (2, 1, 4, 4))),
        ("non-square input and kernel", _conv_case(2, 3, (2, 4), 1, 0, (2, 2, 3, 5))),
        ("stride larger than the kernel (gaps)", _conv_case(2, 2, (2, 2), 3, 0, (2, 2, 3, 4))),
        ("padding crops the border", _conv_case(2, 2, (3, 3), 2, 2, (2, 2, 4, 3))),
        ("1x1 input", _conv_case(2, 3, (3, 2), 1, 0, (2, 2, 1, 1))),
    ),
    rules="no-builtin-conv",
    contract="nn.Module: (in_channels, out_channels, kernel_size=(kh, kw), stride=int, padding=int); forward(x)",
)


def _all_targets() -> dict[str, Target]:
    from torchdojo.verify.targets_cells import LIPSCHITZ_RNN, RESET_CELL, RNN_CELL, STE

    order = (CONV2D, CONV2D_BACKWARD, CONV_TRANSPOSE, STE, RNN_CELL, RESET_CELL, LIPSCHITZ_RNN)
    return {t.name: t for t in order}


TARGETS: dict[str, Target] = _all_targets()
