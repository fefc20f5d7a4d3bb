"""calc's counts cross-checked: params against sum(p.numel()), conv/linear FLOPs against FlopCounterMode."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from torchdojo.calc import analyze
from torchdojo.calc import format as fmt
from torchdojo.calc.resolve import resolve_model
from torchdojo.cli import main
from torchdojo.errors import DojoError
from torchdojo.models import MODELS, build_model


def mystery(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A function the tracer keeps as one opaque call (torch.fx.wrap below)."""
    return torch.tanh(x @ w)


torch.fx.wrap("mystery")


def reference_flops(model: nn.Module, shape: tuple[int, ...], batch: int = 1, grad: bool = False) -> int:
    """FLOPs torch's own counter sees (conv, mm/addmm/bmm: 2 per multiply-accumulate, bias not counted)."""
    param = next(model.parameters())
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.set_grad_enabled(grad):
        model(torch.zeros((batch, *shape), device=param.device))
    return fc.get_total_flops()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg16"])
def test_torchvision_params_and_flops_match_torch(name: str) -> None:
    with torch.device("meta"):  # shapes only: vgg16's 138M weights are never allocated
        model = torchvision.models.get_model(name, weights=None)
    a = analyze(model, (3, 224, 224))
    assert a.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in a.layers) == a.total_params
    ours = a.flops_of("conv", "linear", "matmul", "opaque")
    ref = reference_flops(model, (3, 224, 224))
    assert abs(ours - ref) <= 0.01 * ref
    assert ours == ref  # in fact exact: same convention


def test_resnet18_matches_torchvision_documented_numbers() -> None:
    with torch.device("meta"):
        model = torchvision.models.get_model("resnet18", weights=None)
    a = analyze(model, (3, 224, 224))
    assert round(a.total_params / 1e6, 2) == 11.69  # torchvision docs: 11.7M params
    conv_linear_macs = sum(r.macs for r in a.layers if r.op in ("conv", "linear"))
    assert round(conv_linear_macs / 1e9, 2) == 1.81  # torchvision docs: 1.81 GFLOPS (which are MACs)
    assert [d.size for d in a.layers[-4].rf] == [435, 435]  # the last residual stage sees 435x435 px


@pytest.mark.parametrize("name", MODELS.names())
def test_registered_models_params_and_flops(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10)
    a = analyze(model, (3, 32, 32), batch=2)
    assert a.total_params == sum(p.numel() for p in model.parameters()) == sum(r.params for r in a.layers)
    ref = reference_flops(model, (3, 32, 32), batch=2)
    assert abs(a.flops_of("conv", "linear", "matmul", "opaque") - ref) <= 0.01 * ref
    assert not a.uncounted


def test_conv_transpose_counts_input_positions() -> None:
    # Each of the 8x5x5 input elements is multiplied by a 4x4 kernel for each of 6/2 output channels per
    # group: 8*5*5 * 3 * 16 MACs. Counting output positions instead (torchinfo) would give 8*5*5 -> 8*12*12.
    m = nn.Sequential(nn.ConvTranspose2d(8, 6, 4, stride=2, padding=0, groups=2))
    a = analyze(m, (8, 5, 5))
    (row,) = a.layers
    assert row.out_shape == (1, 6, 12, 12)
    assert row.macs == 8 * 5 * 5 * 3 * 16
    assert row.flops == 2 * row.macs == reference_flops(m, (8, 5, 5))
    assert row.params == 8 * 3 * 16 + 6


def test_functional_ops_shared_modules_and_frozen_split() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 5)
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(F.conv2d(x, self.w, padding=1))  # functional conv on a get_attr weight
            y = self.act(F.max_pool2d(y, 2))  # the same ReLU called twice
            z = y.mean((2, 3))
            return torch.matmul(self.fc(z), self.fc.weight)  # fc's weight reused: counted once

    net = Net()
    net.fc.weight.requires_grad_(False)
    a = analyze(net, (3, 8, 8))
    assert a.total_params == sum(p.numel() for p in net.parameters()) == sum(r.params for r in a.layers)
    assert a.trainable_params == a.total_params - 20
    conv = next(r for r in a.layers if r.op == "conv")
    assert conv.params == 4 * 3 * 9 and conv.macs == 4 * 8 * 8 * 3 * 9
    assert [r.name for r in a.layers if r.type == "ReLU"] == ["act", "act:2"]
    assert a.layer("(unused in forward)").params == 6
    mm = next(r for r in a.layers if r.op == "matmul")
    assert mm.macs == 5 * 4  # (1,5) @ (5,4)
    assert a.flops_of("conv", "linear", "matmul", "opaque") == reference_flops(net, (3, 8, 8))
    pool = next(r for r in a.layers if r.op == "pool")
    assert pool.flops == 4 * 4 * 4 * 4 and [d.size for d in pool.rf] == [4, 4]


def test_rnn_cell_and_layer_counts() -> None:
    a = analyze(nn.Sequential(nn.RNNCell(64, 256)), (64,), batch=3)
    assert a.total_params == 256 * 64 + 256 * 256 + 2 * 256
    assert a.macs == 3 * 256 * (64 + 256)
    lstm = nn.LSTM(10, 20, num_layers=2)

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = lstm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[0]

    a = analyze(Seq(), (2, 10), batch=7)  # (T=7, B=2, I=10)
    assert a.macs == 7 * 2 * 4 * 20 * ((10 + 20) + (20 + 20))


def test_untraceable_model_falls_back_to_hooks_naming_the_layer() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4 * 6 * 6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: no static graph
                x = -x
            return self.fc(x.flatten(1))

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Gate(), nn.ReLU())
    model.train()
    a = analyze(model, (3, 8, 8), batch=2)
    assert model.training and all(m.training for m in model.modules())  # given back as it was
    assert a.method == "forward hooks" and a.gm is None
    assert "layer 1 (Gate)" in a.note and "receptive fields are not available" in a.note
    assert [(r.name, r.type, r.out_shape) for r in a.layers] == [
        ("0", "Conv2d", (2, 4, 6, 6)),
        ("1.fc", "Linear", (2, 5)),
        ("2", "ReLU", (2, 5)),
    ]
    assert a.layer("0").macs == 2 * 4 * 6 * 6 * 3 * 9 and a.layer("1.fc").macs == 2 * 5 * 144
    assert a.total_params == sum(p.numel() for p in model.parameters()) == sum(r.params for r in a.layers)
    assert all(r.rf is None for r in a.layers)
    lines = fmt.summary_lines(a)
    assert any(line.startswith("receptive field: n/a. cannot trace Sequential") for line in lines)
    assert "forward hooks" in fmt.title(a)


def test_leaf_module_without_a_rule_is_counted_inside_by_torch_in_the_fallback() -> None:
    class Custom(nn.Module):  # no children, no counting rule: FlopCounterMode sees its matmul
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Custom(), nn.Linear(3, 2)])  # a container is looked inside

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            if x.sum() > 1e9:
                x = x * 0
            return x

    a = analyze(Net(), (6,), batch=4)
    assert a.method == "forward hooks"
    assert [(r.name, r.op, r.macs) for r in a.layers] == [
        ("blocks.0", "opaque", 4 * 6 * 3),
        ("blocks.1", "linear", 8 * 3),
    ]


def test_too_small_input_names_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 7))
    with pytest.raises(DojoError, match=r"layer 1 \(Conv2d\)"):
        analyze(model, (3, 6, 6))


def test_resolve_model_sources(tmp_path) -> None:
    assert isinstance(resolve_model("resnet18", (3, 32, 32)), torchvision.models.ResNet)
    assert resolve_model("cnn", (1, 28, 28)).num_params() > 0
    (tmp_path / "mynet.py").write_text("import torch.nn as nn\ndef build():\n    return nn.Linear(3, 2)\n")
    assert isinstance(resolve_model(f"{tmp_path}/mynet.py:build", (3,)), nn.Linear)
    with pytest.raises(DojoError, match="unknown model 'resnet19'"):
        resolve_model("resnet19", (3, 32, 32))


def test_cli_formats(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calc", "textbook-cnn", "--input", "1x28x28", "--format", "json", "--freeze", "features.0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    model = build_model("textbook-cnn", (1, 28, 28), 10)
    assert doc["totals"]["params"] == model.num_params()
    assert doc["totals"]["frozen"] == 32 * 9 + 32
    assert doc["layers"][0]["rf"] == "3"
    assert main(["calc", "textbook-cnn", "--input", "1x28x28", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("name,type,input,output,params") and lines[-1].startswith("TOTAL,")
    assert main(["calc", "textbook-cnn", "--input", "1x28x28", "--format", "markdown"]) == 0
    assert "| features.0 | Conv2d |" in capsys.readouterr().out
    assert main(["calc", "textbook-cnn", "--input", "1x28x28", "--erf"]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "empirical receptive field of features.7" in out and "support 10x10" in out
    assert main(["calc", "nope-net"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_attention_counts_match_torch_math_path() -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    model = Attn()
    a = analyze(model, (10, 16), batch=2)  # 2 sequences of 10 tokens of width 16
    (row,) = [r for r in a.layers if r.op == "mha"]
    # q/k/v projections 3*20*16*16, scores 2*4*10*10*4 (x2 for the weighted sum), out projection 20*16*16
    assert row.macs == 3 * 20 * 16 * 16 + 2 * (2 * 4 * 10 * 10 * 4) + 20 * 16 * 16
    with sdpa_kernel(SDPBackend.MATH):  # the math path is plain bmm, which torch's counter sees
        assert 2 * row.macs == reference_flops(model, (10, 16), batch=2, grad=True)
    assert all(d.whole for d in row.rf)  # attention mixes every position


def test_ops_without_a_rule_are_counted_by_torch_inside() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return mystery(x, self.w)

    a = analyze(Net(), (6,), batch=3)
    (row,) = [r for r in a.layers if r.op == "opaque"]
    assert a.opaque == ["mystery (mystery)"] and row.macs == 3 * 6 * 5 and row.params == 30


class Unrolled(nn.Module):
    """An LSTM/GRU/RNN written out step by step with F.linear: what the fused kernel computes, in matmuls
    FlopCounterMode sees (torch's LSTM kernel on the CPU is not visible to it)."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.rnn
        layer_in = x  # (T, N, F)
        for layer in range(m.num_layers):
            outs = []
            for d in range(2 if m.bidirectional else 1):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
                h = x.new_zeros(x.shape[1], w_hh.shape[1])
                steps = []
                for t in range(x.shape[0]) if d == 0 else reversed(range(x.shape[0])):
                    gates = F.linear(layer_in[t], w_ih) + F.linear(h, w_hh)
                    h = torch.tanh(gates[:, : h.shape[1]])  # the counts only: the gate algebra is left out
                    steps.append(h)
                outs.append(torch.stack(steps if d == 0 else steps[::-1]))
            layer_in = torch.cat(outs, -1)
        return layer_in


@pytest.mark.parametrize(
    "rnn",
    [nn.LSTM(32, 64, 2), nn.GRU(8, 16, 3, bidirectional=True), nn.RNN(5, 7, batch_first=True), nn.LSTM(6, 4)],
)
def test_bare_recurrent_layers_are_models_and_their_matmuls_are_counted(rnn: nn.RNNBase) -> None:
    t, batch = 11, 3
    a = analyze(rnn, (t, rnn.input_size), batch=batch)
    (row,) = a.layers
    assert a.method == "fx graph" and row.type == type(rnn).__name__ and row.op == "rnn"
    dirs = 2 if rnn.bidirectional else 1
    expect_in = (batch, t, rnn.input_size) if rnn.batch_first else (t, batch, rnn.input_size)
    assert row.in_shapes == [expect_in] and row.out_shape == expect_in[:2] + (dirs * rnn.hidden_size,)
    assert a.total_params == row.params == sum(p.numel() for p in rnn.parameters())
    x = torch.zeros(t, batch, rnn.input_size)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        Unrolled(rnn)(x)
    assert row.macs == fc.get_total_flops() // 2  # per layer, direction and step: gates x H x (I + H)
    assert fmt.totals(a)["weight_MACs"] == row.macs  # part of the conv/linear/matmul total


def test_lstm_32_64_2_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calc", "torch.nn.LSTM(32, 64, 2)", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["layers"]
    # default 32 steps of 32 features, batch 1: (4 x 64 x (32 + 64) + 4 x 64 x (64 + 64)) x 32
    assert (row["input"], row["output"], row["MACs"]) == ("32x1x32", "32x1x64", 1_835_008)
    assert doc["totals"]["weight_MACs"] == 1_835_008 and doc["totals"]["params"] == 58_368
    assert main(["calc", "nn.GRU(4, 8, batch_first=True)", "--input", "100x4", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["input"] == "1x100x4"
    assert main(["calc", "torch.nn.LSTM(32, 64, 2)", "--input", "10x31"]) == 2
    assert "sequence length x 32 input features" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("__import__('os').system('true')", "is not a torch.nn layer call"),
        ("torch.nn.LSTM(32, open('x'))", "is not a literal"),
        ("torch.nn.LSTM(*[32, 64])", "*args and **kwargs are not accepted"),
        ("torch.nn.Lstm(32, 64)", "did you mean LSTM"),
        ("torch.nn.functional.relu(1)", "is not a torch.nn layer call"),
        ("torch.nn.LSTM(32, 64, nonsense=1)", "cannot build"),
        ("torch.nn.LSTM(32, 64", "cannot parse"),
    ],
)
def test_layer_expressions_are_parsed_never_run(text: str, problem: str) -> None:
    with pytest.raises(DojoError, match=re.escape(problem)):
        resolve_model(text, (3, 32, 32))


def test_eval_mode_by_default_and_the_model_is_given_back_as_it_was() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(144, 2))
    model.train()
    model[1].eval()  # a mixed state is restored module by module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, (3, 8, 8), batch=4, train=True)
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # running stats kept
    a = analyze(model, (3, 8, 8))
    assert a.mode == "eval" and "eval mode" in fmt.title(a)
    with pytest.raises(DojoError, match="more than one value per channel"):
        analyze(nn.Sequential(nn.Conv2d(3, 4, 8), nn.BatchNorm2d(4)), (3, 8, 8), train=True)
    assert main(["calc", "--spec", "3x8x8 | conv 3 4", "--train-mode"]) == 2


def test_cli_on_an_untraceable_model(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gated.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x) if x.sum() >= 0 else x\n"
    )
    ref = f"{tmp_path}/gated.py:Net"
    assert main(["calc", ref, "--input", "3x8x8", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "(eval mode, forward hooks, batch 1)" in out and "| conv | Conv2d | 1x3x8x8 | 1x4x6x6 |" in out
    assert "receptive field: n/a. cannot trace Net" in out
    assert main(["calc", ref, "--input", "3x8x8", "--erf"]) == 2
    assert "--erf needs the model's graph" in capsys.readouterr().err
