"""The source rule (A1: no built-in convolution), on strings: what it flags, with which line, and what it allows."""

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import torchdojo.nn.conv
import torchdojo.nn.conv_transpose
import torchdojo.nn.elman
from torchdojo.verify.rules import RULES, forbidden_ops, source_violations


def hits(source: str, rule: str = "no-builtin-conv") -> list[str]:
    return source_violations(source, rule, "sub.py")


@pytest.mark.parametrize(
    "source,expected",
    [
        ("import torch.nn.functional as F\n", "line 1: imports torch.nn.functional"),
        ("from torch.nn import functional\n", "line 1: imports torch.nn.functional"),
        ("from torch.nn.functional import conv2d\n", "line 1: imports torch.nn.functional"),
        ("from torch import nn\nclass C(nn.Conv2d): pass\n", "line 2: uses torch.nn.Conv2d"),
        ("import torch as t\nclass C(t.nn.ConvTranspose2d): pass\n", "line 2: uses torch.nn.ConvTranspose2d"),
        ("from torch.nn import Conv2d as Mine\n", "line 1: imports torch.nn.Conv2d"),
        ("import torch\ny = torch.conv2d(x, w)\n", "line 2: uses torch.conv2d"),
        ("import torch\ny = torch.conv_transpose2d(x, w)\n", "line 2: uses torch.conv_transpose2d"),
        ("import torch\ny = torch.nn.grad.conv2d_input(s, w, g)\n", "line 2: uses torch.nn.grad"),
        ("import torch\ny = torch._C._nn.im2col(x)\n", "line 2: uses torch._C._nn"),
        ("import torch\ny = torch.ops.aten.convolution(x)\n", "line 2: uses torch.ops.aten.convolution"),
        ("import torch\nf = getattr(torch, 'conv2d')\n", "line 2: names 'conv2d' in a string"),
        ("import torch\nm = torch.nn.Unfold(3)\n", "line 2: uses torch.nn.Unfold"),
        ("f = __import__('torch')\n", "line 1: uses __import__"),
        ("import importlib\n", "line 1: imports importlib"),
        ("y = eval('1')\n", "line 1: uses eval"),
    ],
)
def test_flagged_with_its_line(source: str, expected: str) -> None:
    found = hits(source)
    assert any(h == f"sub.py, {expected}" or h.startswith(f"sub.py, {expected}") for h in found), found


def test_allowed_torch_is_not_flagged() -> None:
    source = """
import math
import torch
from torch import nn


class Conv2d(nn.Module):
    def __init__(self, in_channels=1, out_channels=1, kernel_size=(1, 1), stride=1, padding=0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.conv_count = 0  # our own names may say conv

    def my_conv(self, x):
        windows = x.unfold(2, 3, 1).unfold(3, 3, 1)
        return torch.einsum("bchwij,ocij->bohw", windows, self.weight)

    def forward(self, x):
        return self.my_conv(x)
"""
    assert hits(source) == []


@pytest.mark.parametrize("module", [torchdojo.nn.conv, torchdojo.nn.conv_transpose, torchdojo.nn.elman])
def test_our_references_are_clean(module: object) -> None:
    rule = "no-builtin-rnn" if module is torchdojo.nn.elman else "no-builtin-conv"
    assert source_violations(Path(module.__file__).read_text(), rule) == []


def test_syntax_error_is_a_violation_not_a_crash() -> None:
    assert hits("def f(:\n") == ["sub.py, line 1: not valid Python (invalid syntax)"]


def test_rnn_rule() -> None:
    assert hits("from torch import nn\nclass C(nn.RNNCell): pass\n", "no-builtin-rnn") == [
        "sub.py, line 2: uses torch.nn.RNNCell"
    ]
    assert hits("import torch\nh = torch.rnn_tanh_cell(x, h, a, b)\n", "no-builtin-rnn") == [
        "sub.py, line 2: uses torch.rnn_tanh_cell"
    ]


def test_forbidden_ops_names_phase_and_line() -> None:
    ops = {
        "mul": {"phase": "forward", "where": "sub.py, line 3"},
        "convolution": {"phase": "forward", "where": "sub.py, line 9"},
        "convolution_backward": {"phase": "backward", "where": None},
    }
    assert forbidden_ops(ops, "no-builtin-conv") == [
        "aten.convolution in forward (sub.py, line 9)",
        "aten.convolution_backward in backward",
    ]


@given(st.sampled_from(["conv2d", "convolution", "_convolution", "convolution_backward", "mkldnn_convolution",
                        "_slow_conv2d_forward", "slow_conv_transpose2d", "conv_transpose2d", "im2col", "col2im",
                        "cudnn_convolution", "_conv_depthwise2d", "conv_tbc"]))  # fmt: skip
def test_every_convolution_op_is_forbidden(name: str) -> None:
    assert RULES["no-builtin-conv"].forbidden_ops.search(name)


@given(st.sampled_from(["mul", "add", "unfold", "einsum", "bmm", "mm", "constant_pad_nd", "copy_", "sum",
                        "_convert_indices_from_coo_to_csr", "convert_element_type", "flip", "index_put_"]))  # fmt: skip
def test_ordinary_ops_are_allowed(name: str) -> None:
    assert not RULES["no-builtin-conv"].forbidden_ops.search(name)


def test_messages_are_sorted_by_line() -> None:
    found = hits("import torch\nimport torch.nn.functional as F\ny = torch.conv2d(x)\nz = F.pad(x, (1, 1))\n")
    assert [int(re.search(r"line (\d+)", h).group(1)) for h in found] == [2, 3, 4]
