"""H5: the measurements the cnn-properties experiment rests on, and its smoke run."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments.base import run_experiment
from torchdojo.props import connectivity, equivariance_error, measured_rf, shift


def test_parameter_counts_equal_the_closed_forms() -> None:
    conv, local, dense = connectivity((3, 32, 32), 16, 3)
    assert conv["params"] == 16 * (3 * 9 + 1)
    assert local["params"] == 32 * 32 * 16 * (3 * 9 + 1)
    assert dense["params"] == (3 * 32 * 32) * (16 * 32 * 32) + 16 * 32 * 32


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_measured_receptive_field_of_stacked_3x3_convs(depth: int) -> None:
    net = nn.Sequential(
        *[nn.Sequential(nn.Conv2d(1 if i == 0 else 2, 2, 3, padding=1), nn.ReLU()) for i in range(depth)]
    )
    assert measured_rf(net, (1, 24, 24)) == (1 + 2 * depth, 1 + 2 * depth)


def test_receptive_field_through_max_pooling() -> None:
    # conv3 -> pool2 -> conv3: 3 + (2 - 1) + (3 - 1) * 2 = 8
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1))
    assert measured_rf(net, (1, 24, 24)) == (8, 8)


@settings(max_examples=25, deadline=None)
@given(dy=st.integers(-5, 5), dx=st.integers(-5, 5))
def test_shift_moves_pixels_and_fills_zeros(dy: int, dx: int) -> None:
    x = torch.arange(1, 101, dtype=torch.float32).view(1, 10, 10)
    y = shift(x, dy, dx)
    for i in range(10):
        for j in range(10):
            si, sj = i - dy, j - dx
            expected = x[0, si, sj] if 0 <= si < 10 and 0 <= sj < 10 else 0
            assert y[0, i, j] == expected


def test_stride_one_conv_is_equivariant_and_stride_two_is_not_for_odd_shifts() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 2, 32, 32)
    conv1, conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 3, stride=2, padding=1)
    for s in (1, 2, 3):
        assert equivariance_error(conv1, x, s, 1, 2) < 1e-5
    assert equivariance_error(conv2, x, 2, 2, 2) < 1e-5  # a multiple of the stride: an exact output shift
    assert equivariance_error(conv2, x, 1, 2, 2) > 0.1
    assert equivariance_error(conv2, x, 3, 2, 2) > 0.1


def test_smoke_run_reports_every_property(tmp_path) -> None:
    path = run_experiment(EXPERIMENTS.get("cnn-properties"), scale="smoke", runs_root=tmp_path, verbose=False)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["locality"]["params"]["conv"] < summary["locality"]["params"]["dense"]
    rows = summary["equivariance"]["equivariance_error"]
    assert rows[0]["layer"].endswith("stride 1") and max(v for k, v in rows[0].items() if k != "layer") < 1e-5
    inv = summary["invariance"]
    assert set(inv) == {"no-pool", "max-pool", "global-pool", "global-pool+shift-aug"}
    for r in inv.values():
        assert r["feature_cos_shift0"] == pytest.approx(1.0)
        assert 0.0 <= r["test_acc_shift1"] <= 1.0
    report = json.loads((path / "report.json").read_text())
    headings = [b["text"] for b in report["blocks"] if b["type"] == "heading"]
    assert headings[:3] == [
        "H5.1 Locality and weight sharing",
        "H5.2 Translation equivariance",
        "H5.3 Approximate invariance from pooling",
    ]
    assert any("answered" in h for h in headings)
