"""Every new target: our own implementation passes it, and deliberately broken variants fail it (one test each).

The broken variants are written as small files in tmp_path and checked through one fork server.
"""

import textwrap
from pathlib import Path

import pytest

from torchdojo.verify.rules import rule_properties
from torchdojo.verify.sandbox import ForkServer, Limits, Verdict
from torchdojo.verify.targets import TARGETS

LIMITS = Limits(wall_s=30)

OURS = {
    "conv2d": "torchdojo.nn.conv:Conv2d",
    "conv2d-backward": "torchdojo.nn.conv:Conv2dFunction",  # A2's 5 arguments; dilation and groups default
    "conv-transpose": "torchdojo.nn.conv_transpose:ConvTranspose2d",
    "ste": "torchdojo.nn.ste:Binarize",
    "rnn-cell": "torchdojo.nn.elman:ElmanCell",
    "reset-cell": "torchdojo.rnn.cells:ResetGateCell",
    "lipschitz-rnn": "torchdojo.rnn.cells:LipschitzCell",
}


@pytest.fixture(scope="module")
def server() -> ForkServer:
    with ForkServer() as s:
        yield s


def run(server: ForkServer, tmp_path: Path, target: str, source: str, cls: str = "Broken") -> Verdict:
    path = tmp_path / "sub.py"
    path.write_text(textwrap.dedent(source))
    return server.check(target, f"{path}:{cls}", max_examples=3, limits=LIMITS)


def status(v: Verdict) -> dict[str, bool]:
    return {p.name: p.passed for p in v.properties}


def detail(v: Verdict, name: str) -> str:
    return next(p.detail for p in v.properties if p.name == name)


def test_every_target_has_ours() -> None:
    assert set(OURS) == set(TARGETS)


@pytest.mark.parametrize("target", sorted(OURS))
def test_our_implementation_passes(server: ForkServer, target: str) -> None:
    v = server.check(target, OURS[target], max_examples=5, seeds=[0, 1], limits=LIMITS)
    assert v.ok, [p for p in v.properties if not p.passed]
    t = TARGETS[target]
    assert v.cases == 2 * (2 * len(t.edge_cases) + 5)
    assert [p.name for p in v.properties][: len(t.properties())] == t.properties()
    rules = [p.name for p in v.properties if p.name.startswith("rules")]
    assert rules == rule_properties(t.rules) and (t.rules is None) == (rules == [])


# conv2d-backward (A2): forward is right, one gradient is wrong in each


CONV_FN = """
import torch
from torchdojo.nn.conv import Conv2dFunction as R


class Broken(torch.autograd.Function):
    forward = staticmethod(R.forward)

    @staticmethod
    def backward(ctx, gy):
        gx, gw, gb, *_ = R.backward(ctx, gy)
        {change}
        return gx, gw, gb, None, None
"""


@pytest.mark.parametrize(
    "change,bad",
    [
        ("gw = gw * 2", "grad weight"),
        ("gb = gy.sum((2, 3))[0]", "grad bias"),  # the bias gradient of the first sample only
        ("gx = gx.flip(-1)", "grad x"),
    ],
)
def test_conv2d_backward_broken_gradient_fails(server: ForkServer, tmp_path: Path, change: str, bad: str) -> None:
    v = run(server, tmp_path, "conv2d-backward", CONV_FN.replace("{change}", change))
    s = status(v)
    assert not s[bad] and s["forward"], v.properties
    assert all(ok for name, ok in s.items() if name != bad)


def test_our_conv2d_function_takes_a2s_five_arguments() -> None:
    """The call the conv2d-backward target makes, on torchdojo's own 7-parameter Function, matches torch."""
    import torch
    import torch.nn.functional as F

    from torchdojo.nn.conv import Conv2dFunction

    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in [(2, 2, 5, 4), (3, 2, 3, 2), (3,)])
    y = Conv2dFunction.apply(x, w, b, 2, 1)
    assert torch.allclose(y, F.conv2d(x, w, b, 2, 1))
    assert torch.autograd.gradcheck(lambda *t: Conv2dFunction.apply(*t, 2, 1), [t.requires_grad_() for t in (x, w, b)])


def test_conv2d_backward_without_a_custom_backward_fails(server: ForkServer, tmp_path: Path) -> None:
    v = run(server, tmp_path, "conv2d-backward", CONV_FN.replace("{change}", "gw = None"))
    assert not status(v)["grad weight"] and "no gradient reached dL/dweight" in detail(v, "grad weight")


# ste (A4)

STE = """
import torch


class Broken(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return {forward}

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return {backward}
"""
GOOD_FWD, GOOD_BWD = "torch.where(x >= 0, 1.0, -1.0).to(x.dtype)", "g * (x.abs() <= 1).to(g.dtype)"


def test_ste_reference_as_function_passes(server: ForkServer, tmp_path: Path) -> None:
    v = run(server, tmp_path, "ste", STE.format(forward=GOOD_FWD, backward=GOOD_BWD))
    assert v.ok, v.properties


@pytest.mark.parametrize(
    "forward,backward,bad,label",
    [
        ("torch.sign(x)", GOOD_BWD, "forward", "exact zeros"),  # sign(0) = 0
        (GOOD_FWD, "g", "grad x", "on the clip boundary"),  # identity gradient, not clipped (|x| = 1.5 there)
        (GOOD_FWD, "g * (x.abs() < 1).to(g.dtype)", "grad x", "on the clip boundary"),  # |x| = 1 excluded
        (GOOD_FWD, "torch.zeros_like(g)", "grad x", "exact zeros"),  # the true (zero) derivative
    ],
)
def test_ste_broken_variant_fails(
    server: ForkServer, tmp_path: Path, forward: str, backward: str, bad: str, label: str
) -> None:
    v = run(server, tmp_path, "ste", STE.format(forward=forward, backward=backward))
    assert not status(v)[bad] and label in detail(v, bad), v.properties
    assert all(ok for name, ok in status(v).items() if name != bad)


# reset-cell (F2)

RESET = """
import torch
from torch import nn


class Broken(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        H, I = hidden_size, input_size
        self.weight_ih, self.weight_hh = nn.Parameter(torch.randn(H, I)), nn.Parameter(torch.randn(H, H))
        self.bias_ih, self.bias_hh = nn.Parameter(torch.randn(H)), nn.Parameter(torch.randn(H))
        self.weight_r, self.bias_r = nn.Parameter(torch.randn(H, I)), nn.Parameter(torch.randn(H))

    def forward(self, x, h):
        cand = torch.tanh(x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh)
        gate = x @ self.weight_r.T + self.bias_r
        return {out}
"""


def test_reset_cell_written_out_passes(server: ForkServer, tmp_path: Path) -> None:
    assert run(server, tmp_path, "reset-cell", RESET.format(out="cand * torch.sigmoid(gate)")).ok


@pytest.mark.parametrize(
    "out",
    [
        "cand",  # no reset gate at all
        "cand * torch.tanh(gate)",  # a gate that can flip the sign of the state
        "cand * (1 - torch.sigmoid(gate))",  # the gate inverted
    ],
)
def test_reset_cell_broken_variant_fails(server: ForkServer, tmp_path: Path, out: str) -> None:
    v = run(server, tmp_path, "reset-cell", RESET.format(out=out))
    assert not status(v)["forward"] and status(v)["parameters"]


def test_reset_cell_gate_reading_the_state_fails(server: ForkServer, tmp_path: Path) -> None:
    src = RESET.format(out="cand * torch.sigmoid(gate + h.sum(1, keepdim=True))")
    v = run(server, tmp_path, "reset-cell", src)
    assert not status(v)["forward"] and not status(v)["grad h"]


# lipschitz-rnn (F3)

LIPSCHITZ = """
import torch
from torch import nn


class Broken(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        H, I = hidden_size, input_size
        self.A, self.W = nn.Parameter(torch.randn(H, H)), nn.Parameter(torch.randn(H, H))
        self.U, self.b = nn.Parameter(torch.randn(H, I)), nn.Parameter(torch.zeros(H))

    def forward(self, x, h):
        A, W, U, b = self.A, self.W, self.U, self.b
        return {out}
"""


def test_lipschitz_written_out_passes(server: ForkServer, tmp_path: Path) -> None:
    assert run(
        server, tmp_path, "lipschitz-rnn", LIPSCHITZ.format(out="h @ A.T + torch.tanh(h @ W.T + x @ U.T + b)")
    ).ok


@pytest.mark.parametrize(
    "out,bad",
    [
        ("torch.tanh(h @ W.T + x @ U.T + b)", "grad A"),  # the A h term missing
        ("torch.tanh(h @ A.T + h @ W.T + x @ U.T + b)", "forward"),  # A h inside the tanh
        ("h @ A + torch.tanh(h @ W.T + x @ U.T + b)", "forward"),  # A transposed (h A instead of A h)
        ("h @ A.T + torch.tanh(h @ W.T + x @ U.T)", "grad b"),  # the bias unused
    ],
)
def test_lipschitz_broken_variant_fails(server: ForkServer, tmp_path: Path, out: str, bad: str) -> None:
    v = run(server, tmp_path, "lipschitz-rnn", LIPSCHITZ.format(out=out))
    assert not status(v)[bad], v.properties


# conv-transpose (A3)

TRANSPOSE = """
from torchdojo.nn.conv_transpose import ConvTranspose2d, conv_transpose2d


class Broken(ConvTranspose2d):
    def forward(self, x):
        w, b, s, p = self.weight, self.bias, self.stride, self.padding
        return {call}
"""


@pytest.mark.parametrize(
    "call,message",
    [
        ("conv_transpose2d(x, w, b, 1, p)", "output has shape"),  # stride ignored: no gaps between stamps
        ("conv_transpose2d(x, w, b, s, 0)", "output has shape"),  # padding does not crop the border
        ("conv_transpose2d(x, w.flip(-1, -2), b, s, p)", "output: max |diff|"),  # a correlation's kernel
        ("conv_transpose2d(x, w, None, s, p) + 0 * b.sum()", "output: max |diff|"),  # the bias forgotten
    ],
)
def test_conv_transpose_broken_variant_fails(server: ForkServer, tmp_path: Path, call: str, message: str) -> None:
    v = run(server, tmp_path, "conv-transpose", TRANSPOSE.format(call=call))
    assert not status(v)["forward"] and message in detail(v, "forward") and status(v)["parameters"]


# rnn-cell (Elman vs nn.RNNCell)

ELMAN = """
import torch
from torchdojo.nn.elman import ElmanCell


class Broken(ElmanCell):
    def forward(self, x, h):
        return {out}
"""


@pytest.mark.parametrize(
    "out,bad",
    [
        ("torch.relu(x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh)", "forward"),
        ("torch.tanh(x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh + self.bias_hh)", "forward"),  # W_hh^T
        ("torch.tanh(x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T)", "grad bias_hh"),  # b_hh unused
        ("torch.tanh(x @ self.weight_ih.T + self.bias_ih + h.detach() @ self.weight_hh.T + self.bias_hh)", "grad h"),
    ],
)
def test_rnn_cell_broken_variant_fails(server: ForkServer, tmp_path: Path, out: str, bad: str) -> None:
    v = run(server, tmp_path, "rnn-cell", ELMAN.format(out=out))
    assert not status(v)[bad], v.properties
