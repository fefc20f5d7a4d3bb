"""Mirrored autoencoders: shapes mirror exactly, the inverse metric is ~0 on exact inverses, smoke run."""

import json

import pytest
import torch

from torchdojo.autoencoders import Activation, build_conv, build_fc, conv_output_padding
from torchdojo.autoencoders.inverse import (
    decoder_matrix,
    encoder_matrix,
    layer_report,
    pinv_reconstruct,
    pseudo_inverse,
    relative_error,
)
from torchdojo.errors import DojoError


@pytest.mark.parametrize("size", [8, 27, 28, 32, 33])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (4, 2, 1), (3, 3, 0), (5, 2, 2), (2, 3, 0)])
def test_output_padding_restores_size(size: int, kernel: int, stride: int, padding: int) -> None:
    op = conv_output_padding(size, kernel, stride, padding)
    assert 0 <= op < stride
    conv = torch.nn.Conv2d(1, 1, kernel, stride, padding)
    convt = torch.nn.ConvTranspose2d(1, 1, kernel, stride, padding, output_padding=op)
    assert convt(conv(torch.zeros(1, 1, size, size))).shape[-1] == size


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("stride,pool", [(1, 0), (2, 0), (3, 0), (1, 2)])
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 27, 30)])
def test_conv_decoder_mirrors_every_shape(depth: int, stride: int, pool: int, in_shape: tuple[int, int, int]) -> None:
    if stride == 3 and depth == 4:
        pytest.skip("27 -> 9 -> 3 -> 1: a fourth stride-3 layer does not fit")
    model = build_conv(in_shape, [4 * (i + 1) for i in range(depth)], 3, stride, 1, pool)
    x = torch.randn(2, *in_shape)
    hs = model.encode_all(x)
    assert len(hs) == depth + 1
    for i in range(depth):
        assert hs[i + 1].shape[1:] == model.encoders[i].out_shape
        assert model.invert(i, hs[i + 1]).shape == hs[i].shape  # D_{L+1-i} gives back E_i's input shape
        assert model.mirror(i).out_shape == model.encoders[i].in_shape
    assert model(x).shape == x.shape


def test_conv_stride_too_large_is_a_clear_error() -> None:
    with pytest.raises(DojoError, match="does not fit"):
        build_conv((1, 8, 8), (4, 4, 4, 4), kernel=3, stride=3, padding=0)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_fc_mirror_shapes(depth: int) -> None:
    dims = [64 // (i + 1) for i in range(depth)]
    model = build_fc((1, 8, 8), dims, tied=depth == 3)
    hs = model.encode_all(torch.randn(5, 1, 8, 8))
    for i in range(depth):
        assert model.invert(i, hs[i + 1]).shape == hs[i].shape
    assert model.decoders[0].weight is None or model.decoders[0].weight.shape == (
        dims[-2] if depth > 1 else 64,
        dims[-1],
    )


def test_leaky_relu_inverse_is_exact_and_relu_loses_negatives() -> None:
    x = torch.randn(1000)
    assert torch.allclose(Activation("leaky", 0.1).inverse(Activation("leaky", 0.1)(x)), x, atol=1e-6)
    relu = Activation("relu")
    back = relu.inverse(relu(x))
    assert torch.equal(back[x > 0], x[x > 0]) and (back[x < 0] == 0).all()
    with pytest.raises(DojoError):
        Activation("leaky", 1.5)


def _set_exact_inverse(model, i: int) -> None:  # noqa: ANN001 - test helper
    """Give the mirror of encoder layer i the weights B = pinv(A), c = -pinv(A) b."""
    a = encoder_matrix(model, i)
    pinv = pseudo_inverse(a, ridge=1e-12).to(model.encoders[i].weight.dtype)
    enc, dec = model.encoders[i], model.mirror(i)
    with torch.no_grad():
        dec.weight.copy_(pinv)
        dec.bias.copy_(-(pinv @ enc.bias))


def test_inverse_metric_is_zero_on_an_exact_inverse_fc() -> None:
    torch.manual_seed(0)
    model = build_fc((1, 4, 4), (16, 20), act="leaky", slope=0.3).double()  # square then widening: invertible
    for i in range(2):
        _set_exact_inverse(model, i)
    x = torch.randn(64, 1, 4, 4, dtype=torch.float64)
    rows = layer_report(model, x)
    for r in rows:
        assert r["rel_err"] < 1e-10 and r["pinv_rel_err"] < 1e-6  # pinv carries a 1e-7 ridge
        assert r["cos_to_pinv"] == pytest.approx(1.0, abs=1e-9)
    assert relative_error(model(x), x) < 1e-10
    assert relative_error(pinv_reconstruct(model, x), x) < 1e-6
    # An untrained decoder is far from the inverse: the metric can fail.
    assert layer_report(build_fc((1, 4, 4), (16, 20)).double(), x)[0]["rel_err"] > 0.1


def test_inverse_metric_overcomplete_conv_and_matrices_match_the_ops() -> None:
    torch.manual_seed(0)
    model = build_conv((1, 6, 6), (8,), kernel=3, stride=2, padding=1)  # 8x3x3 = 72 outputs >= 36 inputs
    a, b = encoder_matrix(model, 0), decoder_matrix(model, 0)
    x = torch.randn(3, 1, 6, 6)
    enc = model.encoders[0]
    pre = enc.linear(x).flatten(1) - enc.bias.repeat_interleave(9)
    assert torch.allclose((x.flatten(1).double() @ a.t()).float(), pre, atol=1e-5)
    h = torch.randn(3, 8, 3, 3)
    w = model.decoder_weight(0)
    assert torch.allclose(
        (h.flatten(1).double() @ b.t()).float(),
        torch.nn.functional.conv_transpose2d(h, w, None, 2, 1, enc.output_padding).flatten(1),
        atol=1e-5,
    )
    rows = layer_report(model, torch.randn(32, 1, 6, 6))
    assert rows[0]["pinv_rel_err"] < 1e-8  # a full-column-rank conv has an exact (pseudo-)inverse
    assert rows[0]["rel_err"] > 1e-2  # ... which the random ConvTranspose is not


def test_tied_decoder_uses_the_encoder_adjoint() -> None:
    fc = build_fc((1, 4, 4), (8,), tied=True)
    assert torch.equal(fc.decoder_weight(0), fc.encoders[0].weight.t())
    conv = build_conv((1, 8, 8), (4,), tied=True)
    assert conv.decoder_weight(0) is conv.encoders[0].weight
    assert sum(p.numel() for p in conv.decoders.parameters()) == 1  # only the output bias


def test_autoencoder_experiment_smoke(tmp_path) -> None:  # noqa: ANN001
    from torchdojo.experiments import autoencoder
    from torchdojo.experiments.base import run_experiment

    run_dir = run_experiment(
        autoencoder,
        scale="smoke",
        overrides=["variants=fc-lam0,fc,conv-pool"],
        runs_root=tmp_path,
        device="cpu",
        verbose=False,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["variants"]) == {"fc-lam0", "fc", "conv-pool"}
    for v in summary["variants"].values():
        assert len(v["inverse_err_per_layer"]) == 3 and v["test_mse"] > 0
        assert isinstance(v["learned"], bool) and "for predicting the mean image" in v["learned_reason"]
    report = json.loads((run_dir / "report.json").read_text())
    texts = " ".join(b.get("text", "") for b in report["blocks"])
    assert "- fc: lambda = 0.1 " in texts and "test MSE" in texts and "(fc-lam0)" in texts  # G1's cost, stated
    html = (run_dir / "report.html").read_text()
    assert "Per-layer inverse quality" in html and "reconstructions.png" not in html  # figures are embedded
    assert (run_dir / "figures" / "reconstructions.png").exists() or any(run_dir.rglob("reconstructions.png"))


def test_autoencoder_logs_losses_only_and_reports_the_resolved_settings(tmp_path) -> None:  # noqa: ANN001
    from torchdojo.experiments import autoencoder
    from torchdojo.experiments.base import run_experiment

    run_dir = run_experiment(
        autoencoder,
        scale="smoke",
        overrides=["variants=fc", "train.lr=0.00123"],
        runs_root=tmp_path,
        device="cpu",
        verbose=False,
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(not any(k.endswith("acc") for k in r) for r in rows)  # a regression model: no accuracy
    assert {"train_loss", "val_loss"} <= set(rows[0])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["stages"]["fc"]["lr"] == 0.00123
    report = json.loads((run_dir / "report.json").read_text())
    lrs = [
        row[1]
        for b in report["blocks"]
        if b["type"] == "table" and b["columns"] == ["setting", "value"]
        for row in b["rows"]
        if row[0] == "lr"
    ]
    assert lrs == [0.00123]  # the hyper-parameter table shows what the stage trained with


@pytest.mark.parametrize("key", ["train.label_smoothing", "train.cpu_fusion"])
def test_autoencoder_refuses_unused_settings(key: str) -> None:
    from torchdojo.experiments import autoencoder
    from torchdojo.experiments.base import build_config

    with pytest.raises(DojoError, match=key):
        build_config(autoencoder, "smoke", overrides=[f"{key}=0"])


@pytest.mark.slow
def test_autoencoder_sigkill_mid_epoch_then_resume(tmp_path, kill_and_resume) -> None:  # noqa: ANN001
    args = [
        "run",
        "autoencoder",
        "--scale",
        "smoke",
        "--device",
        "cpu",
        "--quiet",
        "--set",
        "variants=fc,conv",
        "--set",
        "train.epochs=3",
        "--set",
        "train.max_batches=0",
    ]
    ref_run, run = kill_and_resume(args, tmp_path, wait_for="fc")
    ref = json.loads((ref_run / "summary.json").read_text())["variants"]
    got = json.loads((run / "summary.json").read_text())["variants"]
    for name in ("fc", "conv"):
        assert got[name]["test_mse"] == ref[name]["test_mse"]
        assert got[name]["inverse_err_per_layer"] == ref[name]["inverse_err_per_layer"]
