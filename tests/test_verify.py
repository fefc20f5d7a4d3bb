"""The parity suite: our layers pass; deliberately broken submissions fail, each with a readable message.

Checked through one fork server (what `grade` uses); the `check` command itself is in test_check_cli.py.
"""

import re
import textwrap
from pathlib import Path

import pytest

from torchdojo.verify.sandbox import ForkServer, Limits, Verdict
from torchdojo.verify.text import format_verdict

LIMITS = Limits(wall_s=30)

ONE_SIDE_PADDING = """
from torchdojo.nn.conv import Conv2d, correlate


class OneSidePadding(Conv2d):
    def forward(self, x):
        ph, pw = self.padding
        b, c, h, w = x.shape
        xp = x.new_zeros(b, c, h + ph, w + pw)
        xp[:, :, ph:, pw:] = x  # zeros above and on the left only
        return correlate(xp, self.weight, self.stride, self.dilation, self.groups) + self.bias.view(1, -1, 1, 1)
"""

STRIDE_IGNORED = """
from torchdojo.nn.conv import Conv2d, conv2d


class StrideIgnored(Conv2d):
    def forward(self, x):
        return conv2d(x, self.weight, self.bias, 1, self.padding)
"""

KERNEL_NOT_FLIPPED = """
import torch
from torchdojo.nn import conv as C


class _NoFlip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        xp = C.pad2d(x, *padding)
        ctx.save_for_backward(xp, weight)
        ctx.conf = (x.shape, stride, padding)
        return C.correlate(xp, weight, stride, (1, 1), 1) + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, gy):
        xp, weight = ctx.saved_tensors
        shape, stride, (ph, pw) = ctx.conf
        _, _, h, w = shape
        _, _, kh, kw = weight.shape
        z = C.dilate(gy, stride)
        zp = C.pad2d(z, kh - 1, kw - 1, h + 2 * ph - z.shape[2] - kh + 1, w + 2 * pw - z.shape[3] - kw + 1)
        w_t = weight.transpose(0, 1)  # in/out channels swapped, but the kernel is not rotated by 180 degrees
        gx = C.correlate(zp, w_t, (1, 1), (1, 1), 1)[:, :, ph:ph + h, pw:pw + w]
        gw = C.grad_weight(C.im2col(xp, (kh, kw), stride, (1, 1), 1), gy, weight.shape, 1)
        return gx, gw, gy.sum((0, 2, 3)), None, None


class NoFlip(C.Conv2d):
    def forward(self, x):
        return _NoFlip.apply(x, self.weight, self.bias, self.stride, self.padding)
"""

BIAS_MISSING = """
from torchdojo.nn.conv import Conv2d


class NoBias(Conv2d):
    def __init__(self, in_channels=1, out_channels=1, kernel_size=(1, 1), stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
"""


@pytest.fixture(scope="module")
def server() -> ForkServer:
    with ForkServer() as s:
        yield s


def check(server: ForkServer, target: str, spec: str, examples: int = 5, **kw: object) -> tuple[Verdict, str]:
    v = server.check(target, spec, max_examples=examples, limits=LIMITS, **kw)
    return v, format_verdict(v, "torch", LIMITS, "cases" in kw)


def write(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def status(out: str) -> dict[str, str]:
    """{'forward': 'PASS', 'grad x': 'FAIL', ...} from the report."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^(PASS|FAIL)  (.+?)\s+\d+/\d+ passed", out, re.M)}


@pytest.mark.parametrize(
    "target,spec",
    [
        ("conv2d", "torchdojo.nn.conv:Conv2d"),
        ("conv-transpose", "torchdojo.nn.conv_transpose:ConvTranspose2d"),
        ("rnn-cell", "torchdojo.nn.elman:ElmanCell"),
    ],
)
def test_our_layers_pass(server: ForkServer, target: str, spec: str) -> None:
    v, out = check(server, target, spec, 25)
    assert v.ok, out
    assert "FAIL" not in out and set(status(out).values()) == {"PASS"}
    assert re.search(r"\d+ configurations, seeds 0", out)


def test_our_conv2d_passes_from_its_file_path(server: ForkServer) -> None:
    import torchdojo.nn.conv as conv

    v, out = check(server, "conv2d", f"{conv.__file__}:Conv2d")
    assert v.ok, out


def test_padding_on_one_side_only_fails(server: ForkServer, tmp_path: Path) -> None:
    v, out = check(server, "conv2d", write(tmp_path, "one_side.py", ONE_SIDE_PADDING) + ":OneSidePadding", 10)
    assert not v.ok
    assert status(out)["forward"] == "FAIL" and status(out)["parameters"] == "PASS"
    assert re.search(r"problem: output has shape \(\d+, \d+, \d+, \d+\), torch gives", out)
    assert 'first failing: edge case "batch 1"' in out  # the first edge case already has padding 1


def test_stride_ignored_fails(server: ForkServer, tmp_path: Path) -> None:
    v, out = check(server, "conv2d", write(tmp_path, "stride.py", STRIDE_IGNORED) + ":StrideIgnored", 10)
    assert status(out)["forward"] == "FAIL"
    first = re.search(r"FAIL  forward .*\n\s+first failing: (.*)", out).group(1)
    assert "stride=1" not in first  # the first failure is a strided configuration
    assert "output has shape" in out


def test_kernel_not_flipped_in_backward_fails_only_the_input_gradient(server: ForkServer, tmp_path: Path) -> None:
    v, out = check(server, "conv2d", write(tmp_path, "noflip.py", KERNEL_NOT_FLIPPED) + ":NoFlip", 10)
    s = status(out)
    assert s["grad x"] == "FAIL"
    assert s["forward"] == s["grad weight"] == s["grad bias"] == s["parameters"] == "PASS"
    assert re.search(r"problem: dL/dx: max \|diff\| [\d.e+-]+ \(tol 1e-(05|10)\); first mismatch at index", out)


def test_bias_missing_fails(server: ForkServer, tmp_path: Path) -> None:
    v, out = check(server, "conv2d", write(tmp_path, "nobias.py", BIAS_MISSING) + ":NoBias")
    s = status(out)
    assert s["parameters"] == s["forward"] == s["grad bias"] == "FAIL"
    assert "no parameter of shape (4,) for bias (torch.nn.Conv2d has one); found weight (4, 3, 3, 3)" in out


def test_failure_reproduces_with_the_printed_case(server: ForkServer, tmp_path: Path) -> None:
    import json

    spec = write(tmp_path, "stride.py", STRIDE_IGNORED) + ":StrideIgnored"
    v, out = check(server, "conv2d", spec, 10)
    case = json.loads(re.search(r"--case '(.*)'", out).group(1))
    again, text = check(server, "conv2d", spec, cases=[case])
    assert "1 configurations (one --case)" in text and status(text)["forward"] == "FAIL"
    assert again.properties[1].case == case


def test_hidden_seeds_draw_other_cases_over_the_same_properties(server: ForkServer) -> None:
    public = server.check("conv2d", "torchdojo.nn.conv:Conv2d", max_examples=4, limits=LIMITS)
    hidden = server.check("conv2d", "torchdojo.nn.conv:Conv2d", max_examples=4, seeds=[101, 202], limits=LIMITS)
    assert public.seeds == (0,) and hidden.seeds == (101, 202)
    assert [p.name for p in public.properties] == [p.name for p in hidden.properties]
    assert hidden.cases == 2 * public.cases and hidden.ok and public.ok


@pytest.mark.parametrize(
    "source,spec_class,kind,message",
    [
        (
            "import not_a_real_package_xyz\n",
            "Conv",
            "load",
            "importing .*bad.py failed: ModuleNotFoundError: No module named 'not_a_real_package_xyz' "
            r"\(bad.py, line 1\)",
        ),
        ("def broken(:\n", "Conv", "load", r"SyntaxError: [^()]*\(bad.py, line 1\)(?! \()"),  # position once
        ("import torch\nclass Other(torch.nn.Module):\n    pass\n", "Conv", "load", "has no 'Conv'; classes defined"),
        ("def Conv():\n    pass\n", "Conv", "load", "is a function, not an nn.Module subclass"),
        (
            "import torch\nclass Conv(torch.nn.Module):\n    def __init__(self, cin, cout, k):\n"
            "        super().__init__()\n",
            "Conv",
            None,
            r"constructor raised TypeError: .*unexpected keyword argument 'in_channels'",
        ),
        (
            "import torch\nclass Conv(torch.nn.Module):\n    def __init__(self, **kw):\n        super().__init__()\n"
            "        self.weight = torch.nn.Parameter(torch.zeros(1))\n"
            "    def forward(self, x):\n        print('debug output')\n        raise NotImplementedError('todo')\n",
            "Conv",
            None,
            r"problem: forward raised NotImplementedError: todo \(bad.py, line 8\)",
        ),
    ],
)
def test_broken_submissions_become_readable_failures(
    server: ForkServer, tmp_path: Path, source: str, spec_class: str, kind: str | None, message: str
) -> None:
    v, out = check(server, "conv2d", write(tmp_path, "bad.py", source) + f":{spec_class}", 3)
    assert not v.ok and v.failure_kind == kind, out
    assert re.search(message, out), out
    assert "Traceback" not in out and "debug output" not in out  # its prints are in v.stdout, apart
    if "debug output" in source:
        assert "debug output" in v.stdout


def test_detached_output_and_missing_file(server: ForkServer, tmp_path: Path) -> None:
    detached = """
    import torch
    from torchdojo.nn.conv import Conv2d

    class Detached(Conv2d):
        def forward(self, x):
            return torch.tensor(super().forward(x).tolist(), dtype=x.dtype)
    """
    v, out = check(server, "conv2d", write(tmp_path, "det.py", detached) + ":Detached", 3)
    assert status(out)["forward"] == "PASS" and status(out)["grad x"] == "FAIL"
    assert "backward raised RuntimeError" in out
    v, out = check(server, "conv2d", str(tmp_path / "nope.py") + ":X")
    assert v.failure_kind == "load" and "no such file" in out
    v, out = check(server, "conv2d", "no_colon_here.py")
    assert v.failure_kind == "load" and "write FILE.py:ClassName" in out


def test_rnn_cell_without_nonlinearity_fails(server: ForkServer, tmp_path: Path) -> None:
    linear_cell = """
    from torchdojo.nn.elman import ElmanCell

    class Linear(ElmanCell):
        def forward(self, x, h):
            return x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
    """
    v, out = check(server, "rnn-cell", write(tmp_path, "cell.py", linear_cell) + ":Linear")
    assert status(out)["forward"] == "FAIL" and status(out)["parameters"] == "PASS"


def test_rnn_cell_built_on_torch_rnncell_fails_the_rules(server: ForkServer, tmp_path: Path) -> None:
    builtin = "from torch import nn\n\nclass Cell(nn.RNNCell):\n    pass\n"
    v, out = check(server, "rnn-cell", write(tmp_path, "cell.py", builtin) + ":Cell")
    s = status(out)
    assert s["forward"] == "PASS" and s["rules (source)"] == "FAIL" and "rules (ops)" not in s
    assert "cell.py, line 3: uses torch.nn.RNNCell" in out
