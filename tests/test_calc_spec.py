"""The spec language: built modules match their closed forms; inconsistent specs name the layer."""

import pytest
import torch
from torch import nn

from torchdojo.calc import check_spec, parse_spec
from torchdojo.calc.formula import Formula, evaluate
from torchdojo.cli import main
from torchdojo.errors import DojoError

SPECS = [
    "3x128x128 | conv 5 s2 p2 64 relu | conv 5 s2 p2 128 relu | conv 5 s2 p2 256 relu | flatten | fc 200 softmax",
    "3x128x128 | conv 5 s2 p2 64 relu | dsconv 5 s2 p2 128 relu | dsconv 5 s2 p2 256 relu | gap | fc 200 softmax",
    "3x32x32 | conv 3x5 s1x2 p1x2 d2 8 | maxpool 3 s2 p1 | bn | convt 4 s2 p1 4 | avgpool 2 | dropout 0.2 "
    "| flatten | fc 10 | tanh",
    "8x16x16 | conv 3 same g4 nobias 16 gelu | pool avg 2 | conv 1 4 | yolo v3 classes=20",
    "64 | rnncell 64 256",
    "512 | yolo v1 classes=80 boxes=2 grid=7",
]


@pytest.mark.parametrize("text", SPECS)
def test_every_closed_form_matches_the_measurement(text: str) -> None:
    spec, analysis, rows = check_spec(text, batch=2)
    assert rows and all(r["match"] for r in rows), [r for r in rows if not r["match"]]
    quantities = {r["quantity"] for r in rows}
    assert {"params", "MACs", "FLOPs", "output shape"} <= quantities
    assert analysis.total_params == sum(p.numel() for p in spec.model.parameters())
    out = spec.model.eval()(torch.zeros(2, *spec.input_shape))
    assert tuple(out.shape[1:]) == spec.layers[-1].out_shape


def test_formulas_are_printed_with_numbers() -> None:
    spec = parse_spec("3x128x128 | conv 5 s2 p2 64 relu")
    (layer,) = spec.layers
    assert layer.closed["params"].text() == "K*K*M*N + N = 5*5*3*64 + 64 = 4,864"
    assert layer.closed["macs"].value == 64 * 64 * 25 * 3 * 64
    assert layer.closed["Ho=Wo"].text() == "(H + 2*P - K)//S + 1 = (128 + 2*2 - 5)//2 + 1 = 64"
    assert isinstance(spec.model.l1_conv[0], nn.Conv2d) and isinstance(spec.model.l1_conv[1], nn.ReLU)


def test_b2_receptive_field_and_b8_totals() -> None:
    _, a, rows = check_spec("3x128x128 | conv 5 s2 p2 64 relu | conv 5 s2 p2 128 relu | conv 5 s2 p2 256 relu")
    assert [r["measured"] for r in rows if r["quantity"] == "receptive field"] == [5, 13, 29]
    mlp = parse_spec(
        "3x64x64 | flatten | fc 200 | bn | relu | dropout | fc 100 | bn | relu | dropout | fc 50 "
        "| bn | relu | dropout | fc 10"
    )
    cnn = parse_spec(
        "3x64x64 | conv 3 20 | bn | relu | maxpool 2 | conv 3 64 | bn | relu | maxpool 2 | flatten "
        "| fc 100 relu | dropout | fc 50 relu | dropout | fc 10"
    )
    assert sum(p.numel() for p in mlp.model.parameters()) == 2_484_160
    assert sum(p.numel() for p in cnn.model.parameters()) == 1_272_372


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("3x8x8 | conv 3 s2 4 | conv 3 s2 4 | conv 5 4", r"spec layer 3 'conv 5 4': kernel 5 is larger than its 1x1"),
        ("3x8x8 | conv 3 4 | fc 10", r"spec layer 2 'fc 10': needs a flat input"),
        ("3x8x8 | flatten | conv 3 4", r"spec layer 2 'conv 3 4': needs a CxHxW input"),
        ("3x8x8 | conv 3 q2 4", r"spec layer 1 'conv 3 q2 4': cannot read 'q2'"),
        ("3x8x8 | warp 3", r"spec layer 1 'warp 3': unknown layer 'warp'"),
        ("32 | rnncell 64 256", r"spec layer 1 'rnncell 64 256': input size 64 does not match"),
        ("3x8x8 | yolo v4", r"spec layer 1 'yolo v4': needs a version"),
        ("3x8x8 | conv 3 g2 4", r"spec layer 1 'conv 3 g2 4': groups 2 must divide"),
        ("3xAx8 | conv 3 4", r"spec input '3xAx8' is not a shape"),
        ("3x8x8", r"needs an input shape and at least one layer"),
    ],
)
def test_inconsistent_specs_name_the_layer(text: str, match: str) -> None:
    with pytest.raises(DojoError, match=match):
        parse_spec(text)


def test_formula_evaluator_is_arithmetic_only() -> None:
    assert evaluate("ceil(K/S) - 1 + H//2", {"K": 3, "S": 2, "H": 7}) == 4
    assert Formula("2*C", C=8).text() == "2*C = 2*8 = 16"
    with pytest.raises(ValueError):
        evaluate("__import__('os')", {})
    with pytest.raises(ValueError):
        evaluate("K.real", {"K": 3})


def test_cli_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calc", "--spec", "3x32x32 | conv 5 s2 p2 8 relu | gap | fc 10", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "K*K*M*N + N = 5*5*3*8 + 8 = 608" in out and "| NO |" not in out
    assert main(["calc", "--spec", "3x4x4 | conv 7 8"]) == 2
    assert "spec layer 1 'conv 7 8': kernel 7 is larger" in capsys.readouterr().err


def test_cli_help_lists_every_spec_layer() -> None:
    from torchdojo.calc.spec import LAYER_WORDS
    from torchdojo.commands import calc_cmd

    assert all(word in calc_cmd.DESCRIPTION for word in LAYER_WORDS)
