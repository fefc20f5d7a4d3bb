"""Receptive fields of torchvision networks against the gradient support on their linearised copies.

For each network, units at the centre of several layers' outputs are checked: the input pixels the
gradient of the unit reaches on the float64 linearised copy (calc.linear: positive 1/fan-in weights, norms
as identity, activations removed, max-pool as average pool) must be exactly the pixels the analytic
field covers (size, jump and start all matter). The layers are those whose conv-path field fits inside
the input, so nothing is clipped by the borders; where the strict field is "all" (behind a
squeeze-excitation gate), the gradient must reach every input pixel. The conv-path field of the gated
networks is checked on the same network with its gates removed.
"""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from torchdojo.calc import Analysis, Layer, analyze
from torchdojo.calc.linear import expected_interval, support_intervals

slow = pytest.mark.slow
NETS = [  # (model, input size): sizes keep the float64 passes short while the deep fields still fit
    ("convnext_tiny", 96),  # NHWC blocks: permute, LayerNorm and Linear over channels, layer scale
    ("shufflenet_v2_x1_0", 96),  # channel shuffle: view to 5-D, transpose, view back; chunk and cat
    ("resnet18", 96),
    ("mobilenet_v3_small", 64),  # squeeze-excitation with hardsigmoid gates
    ("squeezenet1_1", 96),  # ceil-mode max-pools, fire-module concatenation
    ("alexnet", 96),
    pytest.param("regnet_y_400mf", 64, marks=slow),  # grouped convs and sigmoid gates
    pytest.param("efficientnet_b0", 64, marks=slow),
    pytest.param("densenet121", 64, marks=slow),  # functional relu and pooling, dense concatenation
    pytest.param("googlenet", 96, marks=slow),
    pytest.param("inception_v3", 96, marks=slow),  # asymmetric 1x7 / 7x1 kernels
]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


def centre(row: Layer, field: tuple, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The input pixels the field of the centre unit of `row` covers ((0, extent - 1) when 'all')."""
    return tuple(
        (0, e - 1) if d.whole else expected_interval(d.size, d.jump, d.start, n // 2, e)
        for d, n, e in zip(field, row.out_shape[2:], shape[1:], strict=True)
    )


def fits(row: Layer, shape: tuple[int, ...]) -> bool:
    """The conv-path field of the centre unit lies inside the input (no border clips it)."""
    if row.rf_path is None or row.spatial_axes != (2, 3) or len(row.out_shape) != 4:
        return False
    for d, n, e in zip(row.rf_path, row.out_shape[2:], shape[1:], strict=True):
        lo = d.start + (n // 2) * d.jump - (d.size - 1) / 2
        if d.whole or lo < 0 or lo + d.size - 1 > e - 1:
            return False
    return True


def checked_layers(a: Analysis, shape: tuple[int, ...], count: int = 4) -> list[Layer]:
    rows = [r for r in a.layers if fits(r, shape)]
    assert rows, "no layer's field fits the input"
    picks = sorted({round(i * (len(rows) - 1) / (count - 1)) for i in range(count)})
    return [rows[i] for i in picks]


def assert_fields_measured(a: Analysis, shape: tuple[int, ...], rows: list[Layer]) -> None:
    measured = support_intervals(a.gm, shape, [r.node for r in rows])
    for row, got in zip(rows, measured, strict=True):
        assert got == centre(row, row.rf, shape), (row.name, [d.size for d in row.rf], got)


@pytest.mark.parametrize(("name", "size"), NETS)
def test_fields_equal_the_gradient_support(name: str, size: int) -> None:
    shape = (3, size, size)
    a = analyze(build(name), shape)
    rows = checked_layers(a, shape)
    assert_fields_measured(a, shape, rows)
    deepest = rows[-1]
    print(f"{name} at {size}: {[(r.name, r.rf[0].text(), r.rf_path[0].text()) for r in rows]}")
    assert deepest.rf_path[0].size > size / 2  # a deep layer, not the stem


def test_summary_layer_is_the_last_spatial_one() -> None:
    # before: convnext's NHWC permute and shufflenet's 5-D view made every later layer "all", and the
    # summary named an early layer (RF 4 and 15)
    expected = {"convnext_tiny": ("add_17", 1688), "shufflenet_v2_x1_0": ("conv5.2", 527), "resnet18": (None, 435)}
    for name, (layer, size) in expected.items():
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
        last = analyze(model, (3, 224, 224)).last_spatial
        assert last.out_shape[2:] == (7, 7) and [d.size for d in last.rf] == [size, size] == [
            d.size for d in last.rf_path
        ]
        assert layer is None or last.name == layer


@pytest.mark.parametrize(
    ("name", "size"), [("mobilenet_v3_small", 64), pytest.param("efficientnet_b0", 64, marks=slow)]
)
def test_conv_path_field_is_the_field_without_the_gates(name: str, size: int) -> None:
    shape = (3, size, size)
    gated = analyze(build(name), shape)
    assert all(d.whole for d in gated.last_spatial.rf)  # strict: the first gate already sees everything
    assert not any(d.whole for d in gated.last_spatial.rf_path)
    plain_model = build(name)
    for parent in list(plain_model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, SqueezeExcitation):
                setattr(parent, child_name, nn.Identity())
    plain = analyze(plain_model, shape)
    names = {r.name for r in gated.layers if "." in r.name}  # module layers: the same names in both
    rows = [r for r in checked_layers(plain, shape, count=6) if r.name in names]
    assert len(rows) >= 3
    for row in rows:
        assert [d.size for d in gated.layer(row.name).rf_path] == [d.size for d in row.rf]
    assert_fields_measured(plain, shape, rows)
    last = plain.last_spatial
    assert [d.size for d in gated.layer(last.name).rf_path] == [d.size for d in last.rf]
