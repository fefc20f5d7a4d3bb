"""`torchdojo explain`: the A2 formulas and the A3 worked example, checked by hand and against PyTorch."""

import pytest

from torchdojo.cli import main
from torchdojo.nn.conv_explain import explain_conv_backprop, explain_transposed_conv, parse_matrix

# worked out by hand for a 3x3 X, a 2x2 K, stride 1: Y_ij = sum_ab X_(i+a-1)(j+b-1) K_ab
HAND_DK = [
    "dC/dK11 = dC/dY11·X11 + dC/dY12·X12 + dC/dY21·X21 + dC/dY22·X22",
    "dC/dK12 = dC/dY11·X12 + dC/dY12·X13 + dC/dY21·X22 + dC/dY22·X23",
    "dC/dK21 = dC/dY11·X21 + dC/dY12·X22 + dC/dY21·X31 + dC/dY22·X32",
    "dC/dK22 = dC/dY11·X22 + dC/dY12·X23 + dC/dY21·X32 + dC/dY22·X33",
]
HAND_DX = [
    "dC/dX11 = dC/dY11·K11",
    "dC/dX12 = dC/dY11·K12 + dC/dY12·K11",
    "dC/dX13 = dC/dY12·K12",
    "dC/dX21 = dC/dY11·K21 + dC/dY21·K11",
    "dC/dX22 = dC/dY11·K22 + dC/dY12·K21 + dC/dY21·K12 + dC/dY22·K11",
    "dC/dX23 = dC/dY12·K22 + dC/dY22·K12",
    "dC/dX31 = dC/dY21·K21",
    "dC/dX32 = dC/dY21·K22 + dC/dY22·K21",
    "dC/dX33 = dC/dY22·K22",
]


def test_conv_backprop_formulas_match_the_hand_derivation(capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", "conv-backprop"]) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines()]
    for formula in HAND_DK + HAND_DX:
        assert formula in lines
    assert "Y11 = X11·K11 + X12·K12 + X21·K21 + X22·K22" in lines
    assert "OK: the formulas match PyTorch." in lines


@pytest.mark.parametrize("h,w,kh,kw,stride", [(3, 3, 2, 2, 1), (5, 4, 3, 2, 2), (6, 6, 2, 3, 3), (12, 3, 2, 1, 1)])
def test_conv_backprop_numeric_check_on_other_sizes(h: int, w: int, kh: int, kw: int, stride: int) -> None:
    exp = explain_conv_backprop(h, w, kh, kw, stride, seed=1)
    assert exp.ok and len(exp.checks) == 4 and max(exp.checks.values()) < 1e-12
    assert exp.text.count("dC/dX") >= h * w


def test_transposed_conv_worked_example(capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", "transposed-conv", "--input", "1 2; 3 4", "--kernel", "1 2; 3 4"]) == 0
    out = capsys.readouterr().out
    # x12 = 2 stamps 2K with its corner at row 1, column 2; the sum was checked by hand
    assert "x12 = 2: 2·K placed at row 1, column 2\n  0 2 4\n  0 6 8\n  0 0 0" in out
    assert "Sum of the contributions:\n   1  4  4\n   6 20 16\n   9 24 16" in out
    assert "OK: the hand computation matches PyTorch." in out


def test_transposed_conv_with_stride_and_padding() -> None:
    exp = explain_transposed_conv(parse_matrix("1 2; 3 4"), parse_matrix("1, 0, -1; 2 0.5 1"), stride=2, padding=1)
    assert exp.ok
    assert "padding=1 removes 1 row(s)/column(s) from each border" in exp.text


def test_bad_arguments_are_clear_errors(capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", "transposed-conv", "--input", "1 2; 3"]) == 2
    assert "is not a matrix" in capsys.readouterr().err
    assert main(["explain", "conv-backprop", "--input-size", "2x2", "--kernel-size", "3x3"]) == 2
    assert "kernel <= input" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a number"):
        parse_matrix("1 a; 2 3")
