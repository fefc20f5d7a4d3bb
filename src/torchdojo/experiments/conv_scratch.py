"""Convolution from scratch and by hand (MISSION A1-A4): the scratch Conv2d against nn.Conv2d (values,
gradients, the verifier's suite, speed), backprop through a convolution worked symbolically, a
transposed convolution worked stamp by stamp, and a binarised network trained through a
straight-through estimator next to its float twin.
"""

import dataclasses
import statistics
import time
from typing import Any

import torch
from torch import nn

from torchdojo.config import TrainConfig
from torchdojo.data import stratified_split
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import evaluate, fit
from torchdojo.experiments.base import Context
from torchdojo.nn.conv import Conv2d
from torchdojo.nn.conv_explain import explain_conv_backprop, explain_transposed_conv, parse_matrix
from torchdojo.nn.ste import Binarize
from torchdojo.report import figures

MISSION_IDS = ("A1", "A2", "A3", "A4")
SUMMARY = "convolution from scratch: Conv2d vs nn.Conv2d, backprop and transposed conv by hand, STE"

# A1's sample layers: (in, out, kernel, stride, padding, input shape)
SAMPLES = (
    (3, 4, (3, 3), 2, 1, (2, 3, 8, 8)),
    (2, 3, (2, 3), 1, 2, (1, 2, 5, 7)),
    (1, 2, (4, 4), 3, 0, (3, 1, 10, 9)),
    (4, 2, (5, 5), 1, 0, (2, 4, 5, 5)),
)


@dataclasses.dataclass
class Config:
    seed: int = 0
    check_examples: int = 100  # random configurations of the verifier's suite run on our Conv2d
    transposed_input: str = "1 2; 3 4"  # A3's worked example (seed 004)
    transposed_kernel: str = "1 2; 3 4"
    ste_dataset: str = "digits"
    ste_hidden: int = 256
    bench_batch: int = 32  # speed: input (batch, in, size, size), 3x3 kernel, padding 1
    bench_in: int = 32
    bench_out: int = 64
    bench_size: int = 64
    bench_repeats: int = 3
    train: TrainConfig = dataclasses.field(
        # val_loss picks the best epoch: ~140 validation digits saturate val_acc at 1.0 within a few epochs
        default_factory=lambda: TrainConfig(epochs=20, batch_size=64, lr=3e-3, schedule="cosine", monitor="val_loss")
    )


UNUSED = {
    "train.cpu_fusion": "A4's MLPs have no BatchNorm2d -> ReLU -> max-pool block to fuse",
    "train.channels_last": "A4's MLPs have no 4-D weights or activations",
}
SCALES = {
    "smoke": {
        "check_examples": 5,
        "bench_batch": 2,
        "bench_in": 4,
        "bench_out": 8,
        "bench_size": 16,
        "bench_repeats": 1,
        "train": {"epochs": 2, "max_batches": 5},
    },
    "small": {},
    "full": {"check_examples": 500, "bench_repeats": 7, "train": {"epochs": 60}},
}


def compare_with_torch(dtype: torch.dtype, seed: int) -> list[dict[str, Any]]:
    """A1: max |ours - nn.Conv2d| of the output and of dL/dX, dL/dW, dL/db on each sample layer."""
    rows = []
    for cin, cout, k, s, p, shape in SAMPLES:
        torch.manual_seed(seed)
        ours = Conv2d(cin, cout, k, stride=s, padding=p).to(dtype)
        ref = nn.Conv2d(cin, cout, k, stride=s, padding=p).to(dtype)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(shape, dtype=dtype)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        g = torch.randn(yr.shape, dtype=dtype)
        yo.backward(g)
        yr.backward(g)
        rows.append(
            {
                "layer": f"Conv2d({cin}, {cout}, kernel_size={k}, stride={s}, padding={p})",
                "input": "x".join(map(str, shape)),
                "output": "x".join(map(str, yr.shape)),
                "dtype": str(dtype)[6:],
                "forward": (yo - yr).abs().max().item(),
                "dL/dX": (xo.grad - xr.grad).abs().max().item(),
                "dL/dW": (ours.weight.grad - ref.weight.grad).abs().max().item(),
                "dL/db": (ours.bias.grad - ref.bias.grad).abs().max().item(),
            }
        )
    return rows


def _median_time(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


TIMING_FLOOR_S = 1e-3  # below this a timed call measures overheads, not the convolution


def conv_speed(
    batch: int = 32,
    cin: int = 32,
    cout: int = 64,
    size: int = 64,
    repeats: int = 3,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Median forward and forward+backward seconds of our Conv2d and nn.Conv2d (3x3, padding 1, fp32)."""
    torch.manual_seed(seed)
    ours = Conv2d(cin, cout, 3, padding=1).to(device)
    ref = nn.Conv2d(cin, cout, 3, padding=1).to(device)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(batch, cin, size, size, device=device, requires_grad=True)

    def step(m: nn.Module) -> None:
        y = m(x)
        y.backward(torch.ones_like(y))
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    def forward(m: nn.Module) -> None:
        with torch.no_grad():
            m(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    out = {
        "input": f"{batch}x{cin}x{size}x{size}",
        "kernel": "3x3",
        "channels": f"{cin}->{cout}",
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    for name, m in (("scratch", ours), ("torch", ref)):
        out[f"{name}_forward_s"] = _median_time(lambda m=m: forward(m), repeats)
        out[f"{name}_fwd_bwd_s"] = _median_time(lambda m=m: step(m), repeats)
    out["ratio_forward"] = out["scratch_forward_s"] / out["torch_forward_s"]
    out["ratio_fwd_bwd"] = out["scratch_fwd_bwd_s"] / out["torch_fwd_bwd_s"]
    return out


class TrueSign(nn.Module):
    """sign (±1) with its true gradient, zero: what backprop does without a straight-through estimator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(...) -> (...) in {-1, +1}; no gradient flows back through it."""
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def binary_mlp(in_features: int, hidden: int, classes: int, activation: str) -> nn.Module:
    """Flatten -> [Linear -> BN -> act] x 2 -> Linear; act = hardtanh (float) or sign (with or without STE)."""

    def act() -> nn.Module:
        return {
            "hardtanh": nn.Hardtanh(),
            "sign-ste": Binarize(clip=False),
            "sign-ste-clipped": Binarize(clip=True),
            "sign-no-ste": TrueSign(),
        }[activation]

    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        act(),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        act(),
        nn.Linear(hidden, classes),
    )


STE_MODELS = {
    "float (hardtanh)": ("hardtanh", "the float baseline: the same network with hardtanh, which sign approximates"),
    "binary, STE identity": ("sign-ste", "activations are ±1; backward passes the gradient through unchanged"),
    "binary, STE clipped": ("sign-ste-clipped", "activations are ±1; backward passes the gradient where |x| <= 1"),
    "binary, no STE": ("sign-no-ste", "sign's true gradient (0): only the last layer learns, on random ±1 features"),
}


def train_binary(cfg: Config, ctx: Context) -> list[dict[str, Any]]:
    """A4: the binarised MLPs and the float baseline on the same split, seed and schedule."""
    data = ctx.load_data(cfg.ste_dataset)
    mean, std = data.mean_std()
    tr_idx, va_idx = stratified_split(data.train.y, 0.1, cfg.seed)
    train, val, test = data.train.take(tr_idx), data.train.take(va_idx), data.test
    in_features = data.train.x[0].numel()

    def batches(d: Any, shuffle: bool) -> TensorBatches:
        return TensorBatches(
            d, cfg.train.batch_size if shuffle else cfg.train.eval_batch_size, mean, std, shuffle=shuffle, seed=cfg.seed
        )

    rows, histories = [], {}
    for i, (name, (activation, why)) in enumerate(STE_MODELS.items()):
        torch.manual_seed(cfg.seed)
        model = binary_mlp(in_features, cfg.ste_hidden, len(data.classes), activation).to(ctx.device)
        ctx.log(f"== A4 {i + 1}/{len(STE_MODELS)}: {name}")
        result = fit(
            model,
            batches(train, True),
            batches(val, False),
            ctx.train_config(),
            device=ctx.device,
            stage=f"ste-{activation}",
            run=ctx.run,
            resume=ctx.resume,
            verbose=ctx.verbose,
        )
        ev = {s: evaluate(model, batches(d, False), device=ctx.device) for s, d in (("val", val), ("test", test))}
        histories[name] = result.history
        rows.append(
            {
                "model": name,
                "activation": activation,
                "train_acc": result.history[-1].get("train_acc"),
                "val_acc": ev["val"]["acc"],
                "test_acc": ev["test"]["acc"],
                "test_loss": ev["test"]["loss"],
                "best_epoch": result.best_epoch,
                "why": why,
            }
        )
    figures.curves(histories, ctx.run.figure_path("a4_curves"), title="binarised activations vs float")
    return rows


def _a1(cfg: Config, ctx: Context) -> dict[str, Any]:
    from torchdojo.verify.sandbox import check_isolated

    rows = compare_with_torch(torch.float32, cfg.seed) + compare_with_torch(torch.float64, cfg.seed)
    ctx.report.heading("A1. Conv2d from scratch vs nn.Conv2d")
    ctx.report.text(
        "torchdojo.nn.Conv2d takes the seed's constructor (in_channels=1, out_channels=1, "
        "kernel_size=(1,1), stride=1, padding=0) and uses nothing from torch.nn in its maths: zero "
        "padding by slice assignment, sliding windows as a strided view (as_strided), one matmul, "
        "and a hand-written backward. Its weight and bias have nn.Conv2d's layout and init, so each "
        "layer below loads nn.Conv2d's state dict and runs the same input and output gradient."
    )
    ctx.report.table(rows, caption="max |ours - nn.Conv2d| on sample inputs: output and the three gradients")
    verdict = check_isolated("conv2d", "torchdojo.nn.conv:Conv2d", max_examples=cfg.check_examples, seeds=[cfg.seed])
    ctx.report.table(
        [
            {
                "property": p.name,
                "passed": f"{p.passed_runs}/{p.runs}",
                "worst float32": p.worst.get("float32", ""),
                "worst float64": p.worst.get("float64", ""),
            }
            for p in verdict.properties
        ],
        caption=f"`torchdojo check conv2d` on our Conv2d (isolated process): {verdict.cases} configurations "
        f"(edge cases + {cfg.check_examples} random); pass = |diff| <= tol (1 + |torch|), tol 1e-5 (fp32) / 1e-10 "
        "(fp64); the rules: no built-in convolution in the source or in the ATen ops that ran",
    )
    worst = {k: max(r[k] for r in rows) for k in ("forward", "dL/dX", "dL/dW", "dL/db")}
    return {"max_abs_err": worst, "check_passed": verdict.ok}


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    summary: dict[str, Any] = {"a1": _a1(cfg, ctx)}

    a2 = explain_conv_backprop(seed=cfg.seed)
    ctx.report.heading("A2. Backprop through a convolution, by hand")
    ctx.report.text(
        "For a 3x3 single-channel X and a 2x2 kernel K, with dC/dY known, every dC/dK_ab and "
        "dC/dX_ij written as a sum of dC/dY_ij terms, then evaluated on random numbers and compared "
        "with autograd. Conv2dFunction.backward implements the same two rules for any size, stride, "
        "padding, dilation and groups."
    )
    ctx.report.code(a2.text)
    ctx.report.table([{"check": k, "max |diff|": v} for k, v in a2.checks.items()], caption="A2 numeric check")
    summary["a2_ok"] = a2.ok

    a3 = explain_transposed_conv(parse_matrix(cfg.transposed_input), parse_matrix(cfg.transposed_kernel))
    ctx.report.heading("A3. Transposed convolution, step by step")
    ctx.report.code(a3.text)
    ctx.report.table([{"check": k, "max |diff|": v} for k, v in a3.checks.items()], caption="A3 check with PyTorch")
    summary["a3_ok"] = a3.ok

    ctx.report.heading("A4. Straight-through estimator: a network with sign activations")
    rows = train_binary(cfg, ctx)
    ctx.report.text(
        f"An MLP ({cfg.ste_hidden}-{cfg.ste_hidden} hidden, batch norm before each activation) on "
        f"{cfg.ste_dataset}. sign has zero derivative almost everywhere, so plain backprop would not "
        "move the first layers; the straight-through estimator uses sign forward and a surrogate "
        "gradient backward. Same split, seed and schedule for all; the last row keeps sign's true (zero) "
        "gradient, so the layers before the last never change."
    )
    ctx.report.table(
        rows,
        caption="binarised vs float: accuracy of the best-validation-epoch weights",
        columns=["model", "train_acc", "val_acc", "test_acc", "test_loss", "best_epoch", "why"],
    )
    acc = {r["model"]: r["test_acc"] for r in rows}
    best_ste = max(acc["binary, STE identity"], acc["binary, STE clipped"])
    ctx.report.text(
        f"Test accuracy: float {acc['float (hardtanh)']:.1%}, best binarised with an STE {best_ste:.1%}, "
        f"binarised without one {acc['binary, no STE']:.1%}: the estimator is worth "
        f"{best_ste - acc['binary, no STE']:+.1%} here. Without it only the last layer learns, on "
        "random ±1 projections of the pixels, which on a data set as easy as digits is already a "
        "fair linear classifier."
    )
    ctx.report.figure("a4_curves.png", "train (solid) and validation (dashed) loss and accuracy per epoch")
    summary["a4"] = acc

    ctx.log("== speed: scratch Conv2d vs nn.Conv2d")
    speed = conv_speed(
        cfg.bench_batch, cfg.bench_in, cfg.bench_out, cfg.bench_size, cfg.bench_repeats, ctx.device, cfg.seed
    )
    ctx.report.heading("Speed: scratch Conv2d vs nn.Conv2d")
    ctx.report.table(
        [
            {
                "layer": name,
                "forward (s)": speed[f"{key}_forward_s"],
                "forward + backward (s)": speed[f"{key}_fwd_bwd_s"],
            }
            for name, key in (("torchdojo.nn.Conv2d", "scratch"), ("torch.nn.Conv2d", "torch"))
        ],
        caption=f"median of {cfg.bench_repeats} on {speed['device']} ({speed['threads']} threads), "
        f"input {speed['input']}, 3x3 kernel, {speed['channels']} channels, padding 1, fp32",
    )
    ctx.report.text(
        f"Scratch / torch: {speed['ratio_forward']:.2f}x forward, {speed['ratio_fwd_bwd']:.2f}x "
        "forward + backward. The scratch layer copies the windows once (im2col) and keeps them for "
        "dL/dK; dL/dX is a second im2col of the padded output gradient."
    )
    fastest = min(v for k, v in speed.items() if k.endswith(("_forward_s", "_fwd_bwd_s")))
    speed["meaningful"] = fastest >= TIMING_FLOOR_S
    if not speed["meaningful"]:
        ctx.report.warning(
            f"The fastest timed call took {1e3 * fastest:.3f} ms, under {1e3 * TIMING_FLOOR_S:.0f} ms: at this size "
            "fixed per-call overheads (Python, dispatch, allocation) dominate, so these times and their ratio say "
            "nothing about the two implementations. Run at --scale small or larger (bench_batch, bench_size) to "
            "compare them."
        )
    summary["speed"] = speed
    return summary
