"""The GPU path: device-resident uint8 data with batched augmentation there, channels_last, bf16 autocast,
torch.compile, pinned DataLoader batches. CUDA tests skip without a GPU; the switches' CPU side (fp32,
bit-identical) always runs."""

import pytest
import torch
import torch.nn.functional as F

from torchdojo.config import TrainConfig
from torchdojo.data.augment import build_augment
from torchdojo.data.loader import LoaderBatches, TensorBatches
from torchdojo.engine import evaluate, fit
from torchdojo.models import build_model
from torchdojo.runs import Run

CPU = torch.device("cpu")
MEAN, STD = (0.3,), (0.4,)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fit(
    digits, device: torch.device, run: Run | None = None, epochs: int = 2, max_batches: int | None = 6, **train
) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(0)
    data = digits.train.to(device)
    batches = TensorBatches(data, 64, MEAN, STD, shuffle=True, seed=1, augment=build_augment(["crop", "flip"], 1))
    val = TensorBatches(digits.test.to(device), 512, MEAN, STD)
    model = build_model("cnn", digits.train.shape, 10, channels=(8, 16), fc=(32, 16)).to(device)
    cfg = TrainConfig(epochs=epochs, max_batches=max_batches, optimizer="adamw", lr=3e-3, **train)
    result = fit(model, batches, val, cfg, device=device, run=run, verbose=False)
    return model, result.history


def _numbers(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_amp_switch_leaves_cpu_training_fp32_and_bit_identical(digits):
    _, with_amp = _fit(digits, CPU, amp=True)
    _, without = _fit(digits, CPU, amp=False)
    assert _numbers(with_amp) == _numbers(without)


def test_compile_switch_compiles_the_training_step(digits, monkeypatch, tmp_path):
    calls = []
    real = torch.compile

    def eager_compile(module, **kw):  # eager backend: dynamo traces, no C++ toolchain, no minutes of compiling
        calls.append(type(module).__name__)
        return real(module, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    run = Run(tmp_path / "run")
    model, compiled = _fit(digits, CPU, run=run, compile=True)
    _, plain = _fit(digits, CPU, compile=False)
    assert calls == ["Objective"]  # the whole objective (model + loss) is compiled, once
    for a, b in zip(compiled, plain, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1 / 359)
    state = torch.load(run.checkpoint_dir("main") / "last.pt", weights_only=True)["model"]
    assert set(state) == set(model.state_dict())  # no `_orig_mod.` prefix: loads into the plain model


@cuda
def test_device_resident_batches_match_cpu(digits):
    dev = torch.device("cuda")
    aug = build_augment(["crop", "flip", "erase"], 2)
    opts = {"shuffle": True, "seed": 4, "augment": aug, "channels_last": True}
    on_gpu = TensorBatches(digits.train.to(dev), 100, MEAN, STD, **opts)
    on_cpu = TensorBatches(digits.train, 100, MEAN, STD, **opts)
    assert on_gpu.data.x.dtype == torch.uint8 and on_gpu.data.x.is_cuda  # uint8 stays resident on the GPU
    for (xg, yg), (xc, yc) in zip(on_gpu.set_epoch(3), on_cpu.set_epoch(3), strict=True):
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yg.cpu(), yc)
        torch.testing.assert_close(xg.cpu(), xc)  # augmentation on the GPU draws what it draws on the CPU


@cuda
def test_fit_on_cuda_uses_bf16_autocast_and_channels_last(digits, tmp_path):
    dev = torch.device("cuda")
    seen = []

    def loss_fn(model, x, y):
        logits = model(x)
        seen.append(logits.dtype)
        return F.cross_entropy(logits, y), logits

    torch.manual_seed(0)
    model = build_model("cnn", digits.train.shape, 10, channels=(8, 16), fc=(32, 16)).to(dev)
    batches = TensorBatches(digits.train.to(dev), 64, MEAN, STD, shuffle=True)
    cfg = TrainConfig(epochs=1, max_batches=4)
    fit(model, batches, None, cfg, device=dev, loss_fn=loss_fn, run=Run(tmp_path / "run"), verbose=False)
    assert set(seen) == {torch.bfloat16}
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.dtype == torch.float32  # autocast: fp32 master weights
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    seen.clear()
    fit(
        model,
        batches,
        None,
        TrainConfig(epochs=1, max_batches=2, amp=False),
        device=dev,
        loss_fn=loss_fn,
        verbose=False,
    )
    assert set(seen) == {torch.float32}  # the switch: fp32 on the GPU too


@cuda
def test_cuda_training_learns_and_evaluates_like_cpu(digits):
    dev = torch.device("cuda")
    model, history = _fit(digits, dev, epochs=8, max_batches=None, amp=False)  # 184 steps
    _, on_cpu = _fit(digits, CPU, epochs=8, max_batches=None, amp=False)  # on CPU: val acc 0.67, from 0.13
    assert history[-1]["val_acc"] > 0.5 and on_cpu[-1]["val_acc"] > 0.5
    assert history[-1]["train_loss"] == pytest.approx(on_cpu[-1]["train_loss"], rel=0.15)  # dropout masks differ
    val_gpu = evaluate(model, TensorBatches(digits.test.to(dev), 512, MEAN, STD), device=dev)
    val_cpu = evaluate(model.cpu(), TensorBatches(digits.test, 512, MEAN, STD), device=CPU)
    assert val_gpu["acc"] == pytest.approx(val_cpu["acc"], abs=2 / 359)
    assert val_gpu["loss"] == pytest.approx(val_cpu["loss"], rel=1e-3)


@cuda
def test_compiled_bf16_training_on_cuda(digits):
    _, history = _fit(digits, torch.device("cuda"), compile=True)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)


@cuda
def test_loader_batches_are_pinned_for_cuda(digits):
    dataset = torch.utils.data.TensorDataset(digits.train.x.float(), digits.train.y)
    loader = LoaderBatches(dataset, 128, shuffle=True, device="cuda")
    x, y = next(iter(loader.set_epoch(1)))
    assert loader.loader.pin_memory and x.is_pinned() and y.is_pinned()  # so non_blocking copies overlap
