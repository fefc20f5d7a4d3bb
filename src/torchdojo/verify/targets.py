"""What `torchdojo check` can verify: conv2d, conv-transpose and rnn-cell, each against torch.nn.

Each target uses the constructor the course asks for (keywords only), a hypothesis strategy for random
configurations, and named edge cases. Conv targets draw scalar stride/padding and (kh, kw) kernels,
exactly the A1 constructor `(in_channels, out_channels, kernel_size, stride, padding)`.
"""

from typing import Any

from torch import nn

from torchdojo.verify.core import Case, Target


def _conv_case(cin: int, cout: int, k: tuple[int, int], s: int, p: int, x: tuple[int, int, int, int]) -> Case:
    return {
        "init": {"in_channels": cin, "out_channels": cout, "kernel_size": list(k), "stride": s, "padding": p},
        "shape": {"x": list(x)},
    }


def _conv2d_strategy() -> Any:
    from hypothesis import strategies as st

    @st.composite
    def case(draw: Any) -> Case:
        cin, cout = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        s, p = draw(st.integers(1, 4)), draw(st.integers(0, 3))
        h0, w0 = max(1, kh - 2 * p), max(1, kw - 2 * p)  # the smallest input the kernel fits once padded
        h, w = draw(st.integers(h0, h0 + 7)), draw(st.integers(w0, w0 + 7))
        c = _conv_case(cin, cout, (kh, kw), s, p, (draw(st.integers(1, 3)), cin, h, w))
        return {
            **c,
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "seed": draw(st.integers(0, 2**31 - 1)),
        }

    return case()


def _conv_transpose_strategy() -> Any:
    from hypothesis import strategies as st

    @st.composite
    def case(draw: Any) -> Case:
        cin, cout = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        s, p = draw(st.integers(1, 3)), draw(st.integers(0, 2))
        # output (n - 1) * s - 2p + k must be >= 1, i.e. n >= ceil((2p - k + 1) / s) + 1
        h0, w0 = max(1, -(-(2 * p - kh + 1) // s) + 1), max(1, -(-(2 * p - kw + 1) // s) + 1)
        h, w = draw(st.integers(h0, h0 + 5)), draw(st.integers(w0, w0 + 5))
        c = _conv_case(cin, cout, (kh, kw), s, p, (draw(st.integers(1, 3)), cin, h, w))
        return {
            **c,
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "seed": draw(st.integers(0, 2**31 - 1)),
        }

    return case()


def _rnn_strategy() -> Any:
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


def _conv2d(init: dict[str, Any]) -> nn.Module:
    return nn.Conv2d(**init)


def _conv_transpose2d(init: dict[str, Any]) -> nn.Module:
    return nn.ConvTranspose2d(**init)


def _rnn_cell(init: dict[str, Any]) -> nn.Module:
    return nn.RNNCell(**init)


CONV2D = Target(
    name="conv2d",
    reference="torch.nn.Conv2d",
    make_reference=_conv2d,
    param_names=("weight", "bias"),
    input_names=("x",),
    strategy=_conv2d_strategy,
    param_scale=0.5,
    edge_cases=(
        ("batch 1", _conv_case(3, 4, (3, 3), 1, 1, (1, 3, 6, 6))),
        ("one channel", _conv_case(1, 1, (3, 3), 1, 0, (2, 1, 5, 5))),
        ("non-square input and kernel", _conv_case(2, 3, (2, 4), 1, 0, (2, 2, 5, 9))),
        ("non-square, stride 2 and padding 1", _conv_case(2, 3, (3, 2), 2, 1, (2, 2, 7, 4))),
        ("stride larger than the kernel", _conv_case(2, 2, (2, 2), 3, 0, (2, 2, 8, 7))),
        ("padding larger than the kernel", _conv_case(2, 2, (2, 3), 1, 4, (2, 2, 3, 3))),
        ("kernel equal to the input", _conv_case(2, 3, (5, 5), 1, 0, (2, 2, 5, 5))),
        ("kernel equal to the input, non-square", _conv_case(1, 2, (3, 6), 2, 0, (3, 1, 3, 6))),
        ("1x1 kernel", _conv_case(4, 2, (1, 1), 1, 0, (2, 4, 3, 5))),
    ),
)

CONV_TRANSPOSE = Target(
    name="conv-transpose",
    reference="torch.nn.ConvTranspose2d",
    make_reference=_conv_transpose2d,
    param_names=("weight", "bias"),
    input_names=("x",),
    strategy=_conv_transpose_strategy,
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
)

RNN_CELL = Target(
    name="rnn-cell",
    reference="torch.nn.RNNCell",
    make_reference=_rnn_cell,
    param_names=("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
    input_names=("x", "h"),
    strategy=_rnn_strategy,
    param_scale=0.5,
    edge_cases=tuple(
        (label, {"init": {"input_size": i, "hidden_size": h}, "shape": {"x": [b, i], "h": [b, h]}})
        for label, i, h, b in (
            ("batch 1", 4, 6, 1),
            ("one input feature", 1, 5, 3),
            ("one hidden unit", 4, 1, 3),
            ("input wider than hidden", 9, 3, 2),
            ("hidden wider than input", 3, 9, 2),
            ("equal sizes", 5, 5, 2),
        )
    ),
)

TARGETS: dict[str, Target] = {t.name: t for t in (CONV2D, CONV_TRANSPOSE, RNN_CELL)}
