"""The properties of CNNs, measured (MISSION H5): locality and weight sharing (parameters of a conv vs a
locally connected vs a dense layer; receptive fields), translation equivariance of a convolution and how
stride breaks it, and the approximate invariance pooling buys (test accuracy on shifted images, feature
similarity, and the position information pooling throws away), each with its advantage and its drawback
stated from the numbers.
"""

import dataclasses
from typing import Any

import torch
from torch import nn

from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.data import ImageData, Splits, random_subset, stratified_split
from torchdojo.data.augment import build_augment
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import evaluate, fit
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context
from torchdojo.props import VARIANTS, ShiftNet, connectivity, equivariance_error, measured_rf, shift
from torchdojo.report import figures

MISSION_IDS = ("H5",)
SUMMARY = "the properties of CNNs measured: locality, weight sharing, equivariance, invariance from pooling"
UNUSED = {
    "train.cpu_fusion": "the compared nets have no BatchNorm -> ReLU -> MaxPool blocks to fuse (no BatchNorm, "
    "so their pooling is measured as written)",
}
DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))  # (dy, dx) unit steps


@dataclasses.dataclass
class Config:
    dataset: str = "fashion-mnist"
    variants: tuple[str, ...] = tuple(VARIANTS)
    channels: tuple[int, ...] = (16, 32)  # the two conv layers of every compared net
    shifts: tuple[int, ...] = (0, 1, 2, 3, 4)  # test-image shifts in pixels (random direction per image)
    aug_padding: int = 3  # the shift augmentation: zero-pad by this much and crop back at random
    train_subset: int = 0  # training images used (0 = all)
    val_fraction: float = 0.1
    eval_images: int = 2000  # test images for the shift measurements (0 = all)
    seed: int = 0
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(epochs=4, batch_size=128, optimizer="adamw", lr=2e-3, schedule="cosine")
    )

    def __post_init__(self) -> None:
        for v in self.variants:
            if v not in VARIANTS:
                raise DojoError(f"unknown variant {v!r}", f"variants: {', '.join(VARIANTS)}")
        if len(self.channels) != 2:
            raise DojoError(f"channels must be two widths (conv1,conv2), got {self.channels}", "--set channels=16,32")
        if not self.shifts or min(self.shifts) < 0 or 0 not in self.shifts:
            raise DojoError(f"shifts must be >= 0 and include 0, got {self.shifts}", "--set shifts=0,1,2,3,4")


SCALES = {
    "smoke": {
        "dataset": "digits",
        "channels": "4,8",
        "shifts": "0,1,2",
        "aug_padding": 1,
        "eval_images": 128,
        "train": {"epochs": 1, "batch_size": 64, "max_batches": 3},
    },
    "small": {"train_subset": 12000, "eval_images": 1000, "train": {"epochs": 4}},
    "full": {"train": {"epochs": 10}},
}


def locality(data: Splits, cfg: Config, ctx: Context) -> dict[str, Any]:
    """Locality and weight sharing: parameters of the same feature map made three ways; receptive fields."""
    shape, c1 = data.train.shape, cfg.channels[0]
    rows = connectivity(shape, c1, 3)
    for r in rows:
        if r["params"] != r["closed_form"]:
            raise AssertionError(f"{r['layer']}: measured {r['params']} != closed form {r['closed_form']}")
    conv, local, dense = (r["params"] for r in rows)
    depth_rows = []
    for depth in range(1, 5):
        stack = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(shape[0] if i == 0 else c1, c1, 3, padding=1), nn.ReLU()) for i in range(depth)]
        )
        pooled = nn.Sequential(*[m for i in range(depth) for m in (stack[i], nn.MaxPool2d(2))][:-1])
        r, j = 1, 1  # the pooled stack's field by the recurrence r += (k - 1) * jump, jump *= stride
        for i in range(depth):
            r, j = (r + 2 * j, j) if i == depth - 1 else (r + 2 * j + j, 2 * j)
        fits = min(shape[1:]) >= 2 ** (depth - 1)  # every pooling still has a 2x2 window to pool
        got = "x".join(map(str, measured_rf(pooled, shape))) if fits else "n/a"
        if fits and r > min(shape[1:]):
            got += f" (the whole input; the formula gives {r})"
        depth_rows.append(
            {
                "3x3 convs": depth,
                "RF formula (stride 1)": f"{1 + 2 * depth}",
                "RF measured": "x".join(map(str, measured_rf(stack, shape))),
                "RF with 2x2 max-pool between": got,
            }
        )
    ctx.report.heading("H5.1 Locality and weight sharing")
    ctx.report.text(
        f"Three layers that all turn one {'x'.join(map(str, shape))} image into {c1} maps of "
        f"{shape[1]}x{shape[2]}: the convolution connects each output to a 3x3 window (locality) and uses the "
        f"same kernel at every position (weight sharing). Parameters are counted from the built modules and "
        "equal the closed forms."
    )
    ctx.report.table(
        [{k: r[k] for k in ("layer", "local", "shared", "params", "formula", "inputs_per_output")} for r in rows],
        caption="the same feature map, three ways",
    )
    ctx.report.text(
        f"Advantage: weight sharing cuts the parameters {local / conv:,.0f}x against the locally connected layer "
        f"with the same connections, and locality {dense / conv:,.0f}x against the dense layer; fewer parameters "
        "to learn from the same data, and a feature detector learnt at one position works at every other one. "
        "Drawback: one layer sees only its 3x3 window. The measured receptive field (gradient support of the "
        "centre unit) grows by only 2 pixels per stride-1 layer, so seeing the whole image takes depth or "
        "pooling:"
    )
    ctx.report.table(depth_rows, caption="receptive field of the centre unit, measured from its input gradient")
    return {"params": {"conv": conv, "locally_connected": local, "dense": dense}, "receptive_fields": depth_rows}


def equivariance(x: torch.Tensor, cfg: Config, ctx: Context) -> dict[str, Any]:
    """conv(shift(x)) against shift(conv(x)) for a stride-1 conv, a stride-2 conv and conv + 2x2 max-pool."""
    torch.manual_seed(cfg.seed)
    c = x.shape[1]
    layers = {
        "conv 3x3, stride 1": (nn.Conv2d(c, cfg.channels[0], 3, padding=1), 1),
        "conv 3x3, stride 2": (nn.Conv2d(c, cfg.channels[0], 3, stride=2, padding=1), 2),
        "conv 3x3 + 2x2 max-pool": (nn.Sequential(nn.Conv2d(c, cfg.channels[0], 3, padding=1), nn.MaxPool2d(2)), 2),
    }
    shifts = [s for s in range(1, 5) if x.shape[-1] > 4 * (s + 2)]
    rows = []
    for name, (layer, stride) in layers.items():
        row: dict[str, Any] = {"layer": name}
        for s in shifts:
            row[f"shift {s} px"] = equivariance_error(layer, x, s, stride, margin=2)
        rows.append(row)
    _equivariance_figure(layers["conv 3x3, stride 1"][0], x[:1], ctx)
    ctx.report.heading("H5.2 Translation equivariance")
    ctx.report.text(
        f"For {len(x)} test images ({x.shape[-2]}x{x.shape[-1]}; images under 28 px are upscaled to 32 px for this "
        "measurement) shifted by s pixels down and right (zero fill), the relative error "
        "max |f(shift(x)) - shift(f(x))| / max |f(x)| over output positions at least 2 pixels (plus the shift) "
        "from every border, where zero padding cannot differ. A strided layer is compared with the output shift "
        "s / stride when it is a whole number, else with the better of the two nearest."
    )
    ctx.report.table(rows, caption="equivariance error (0 = the layer commutes with the shift)")
    stride1 = max(rows[0][f"shift {s} px"] for s in shifts) if shifts else float("nan")
    odd = [rows[1][f"shift {s} px"] for s in shifts if s % 2]
    ctx.report.text(
        f"Measured: the stride-1 convolution is equivariant (largest error {stride1:.1e}): a feature moves with "
        "the object, so the same detector finds it anywhere (advantage). Stride breaks it"
        + (
            f": shifted by an odd number of pixels, the stride-2 output matches no shifted copy of itself "
            f"(error {max(odd):.2f}); only shifts by a multiple of the stride survive. Downsampling is what "
            "makes real CNNs only approximately equivariant (drawback)."
            if odd
            else "."
        )
    )
    ctx.report.figure("h5_equivariance.png", "a feature map of x, of shift(x), and conv(shift x) - shift(conv x)")
    return {"equivariance_error": rows}


def _equivariance_figure(conv: nn.Module, x: torch.Tensor, ctx: Context) -> None:
    s = max(1, x.shape[-1] // 7)
    with torch.no_grad():
        fx, fsx = conv(x)[0, 0], conv(shift(x, s, s))[0, 0]
    diff = fsx - shift(fx, s, s)
    figures.image_grid(
        [x[0], shift(x, s, s)[0], fx[None], fsx[None], diff[None]],
        ctx.run.figure_path("h5_equivariance"),
        ncols=5,
        titles=["x", f"shift(x, {s})", "conv(x)", "conv(shift x)", "difference"],
        cell=2.0,
    )


def shifted_test(test: ImageData, s: int, seed: int) -> tuple[ImageData, torch.Tensor]:
    """Every test image moved by `s` pixels in one of 8 directions (drawn per image, seeded); and the (dy, dx)."""
    g = torch.Generator().manual_seed(seed + s)
    pick = torch.randint(0, len(DIRECTIONS), (len(test),), generator=g)
    moves = torch.tensor(DIRECTIONS)[pick] * s
    x = torch.stack([shift(img, int(dy), int(dx)) for img, (dy, dx) in zip(test.x, moves.tolist(), strict=True)])
    return ImageData(x, test.y, test.classes), moves


def invariance(data: Splits, cfg: Config, ctx: Context) -> dict[str, Any]:
    """Train each variant; its accuracy and feature similarity on shifted test images; how much position its
    features keep (a least-squares probe predicting the shift)."""
    tr_idx, va_idx = stratified_split(data.train.y, cfg.val_fraction, cfg.seed)
    tr_idx = random_subset(tr_idx, cfg.train_subset, cfg.seed)
    dev, (mean, std) = ctx.device, data.mean_std()
    train, val = data.train.take(tr_idx).to(dev), data.train.take(va_idx).to(dev)
    test = data.test.take(random_subset(torch.arange(len(data.test)), cfg.eval_images, cfg.seed))
    shifted = {s: shifted_test(test, s, cfg.seed) for s in cfg.shifts}
    tcfg = ctx.train_config()
    ctx.report.heading("H5.3 Approximate invariance from pooling")
    ctx.report.text(
        f"{len(cfg.variants)} nets with the same two 3x3 convs ({cfg.channels[0]} and {cfg.channels[1]} maps) train "
        f"on {len(train):,} images (validation {len(val):,}); each is then tested on {len(test):,} test images "
        f"moved by 0-{max(cfg.shifts)} pixels in a random one of 8 directions (zero fill)."
    )
    results, acc_series, sim_series = {}, {}, {}
    for i, name in enumerate(cfg.variants):
        v = VARIANTS[name]
        torch.manual_seed(cfg.seed + i)
        model = ShiftNet(data.train.shape, len(data.classes), tuple(cfg.channels), v.pool).to(dev)
        aug = build_augment(("crop",), cfg.aug_padding) if v.augment else None

        def batches(d: ImageData, is_train: bool, aug: Any = aug) -> TensorBatches:
            size = tcfg.batch_size if is_train else tcfg.eval_batch_size
            return TensorBatches(d, size, mean, std, shuffle=is_train, seed=cfg.seed, augment=aug if is_train else None)

        ctx.log(f"== {name} ({model.num_params():,} params)")
        fit_result = fit(
            model,
            batches(train, True),
            batches(val, False),
            tcfg,
            device=dev,
            stage=name,
            run=ctx.run,
            resume=ctx.resume,
            verbose=ctx.verbose,
        )
        model.eval()
        accs = {s: evaluate(model, batches(d.to(dev), False), device=dev)["acc"] for s, (d, _) in shifted.items()}
        sims, probe = _feature_measures(model, shifted, mean, std, dev)
        results[name] = {
            "params": model.num_params(),
            "best_epoch": fit_result.best_epoch,
            "val_acc": max(r.get("val_acc", 0.0) for r in fit_result.history),
            **{f"test_acc_shift{s}": a for s, a in accs.items()},
            **{f"feature_cos_shift{s}": c for s, c in sims.items()},
            "position_r2": probe,
        }
        acc_series[name] = (list(accs), list(accs.values()))
        sim_series[name] = (list(sims), list(sims.values()))
    _report_invariance(results, acc_series, sim_series, tcfg, cfg, ctx)
    return results


@torch.no_grad()
def _feature_measures(
    model: ShiftNet, shifted: dict[int, tuple[ImageData, torch.Tensor]], mean: Any, std: Any, dev: torch.device
) -> tuple[dict[int, float], float]:
    """Mean cosine similarity of features(x) and features(shift x) per shift; and the R^2 of a least-squares
    probe that predicts the (dy, dx) shift of each image from its features (how much position they keep)."""

    def feats(d: ImageData) -> torch.Tensor:
        m = torch.tensor(mean, device=dev).view(1, -1, 1, 1) * 255
        sd = torch.tensor(std, device=dev).view(1, -1, 1, 1) * 255
        return torch.cat(
            [model.features(d.x[i : i + 512].to(dev).float().sub(m).div(sd)) for i in range(0, len(d), 512)]
        ).double()

    base = feats(shifted[0][0])
    sims = {
        s: float(torch.nn.functional.cosine_similarity(base, feats(d), dim=1).mean()) for s, (d, _) in shifted.items()
    }
    moved = [s for s in shifted if s > 0]
    if not moved:
        return sims, float("nan")
    f = torch.cat([feats(shifted[s][0]) for s in moved])
    y = torch.cat([shifted[s][1] for s in moved]).double().to(f.device)
    half = len(f) // 2  # fit the probe on one half, score it on the other
    design = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], 1)
    a, b = design[:half], design[half:]
    if a.shape[1] <= a.shape[0]:  # ridge regression, in whichever of feature or sample space is smaller
        w = torch.linalg.solve(a.T @ a + 1e-3 * torch.eye(a.shape[1], dtype=f.dtype, device=f.device), a.T @ y[:half])
    else:
        w = a.T @ torch.linalg.solve(a @ a.T + 1e-3 * torch.eye(len(a), dtype=f.dtype, device=f.device), y[:half])
    pred, truth = b @ w, y[half:]
    r2 = 1 - ((pred - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum().clamp_min(1e-12)
    return sims, float(r2)


def _report_invariance(
    results: dict[str, dict[str, Any]],
    acc_series: dict[str, Any],
    sim_series: dict[str, Any],
    tcfg: TrainConfig,
    cfg: Config,
    ctx: Context,
) -> None:
    top = max(cfg.shifts)
    figures.line_plot(
        acc_series, ctx.run.figure_path("h5_shift_accuracy"), "test-image shift (pixels)", "test accuracy"
    )
    figures.line_plot(
        sim_series,
        ctx.run.figure_path("h5_feature_similarity"),
        "test-image shift (pixels)",
        "cosine(f(x), f(shift x))",
    )
    ctx.report.table(
        [
            {
                "net": n,
                "params": r["params"],
                "val_acc": r["val_acc"],
                **{f"acc, shift {s}": r[f"test_acc_shift{s}"] for s in cfg.shifts},
                "position R2": r["position_r2"],
            }
            for n, r in results.items()
        ],
        caption="test accuracy on shifted images; position R2: how well a linear probe reads the shift from the "
        "features (1 = all position kept, <= 0 = none)",
    )
    ctx.report.figure("h5_shift_accuracy.png", "test accuracy against the shift of the test images")
    ctx.report.figure("h5_feature_similarity.png", "how similar the features of an image and its shifted copy are")
    ctx.report.table([{"setting": k, "value": v} for k, v in hyper_parameters(tcfg).items()], caption="training")
    drops = {n: r["test_acc_shift0"] - r[f"test_acc_shift{top}"] for n, r in results.items()}
    ranked = sorted(drops, key=drops.get)
    text = [
        f"Measured: moving the test images by {top} pixels costs "
        + ", ".join(f"{n} {100 * drops[n]:.1f} points" for n in ranked)
        + " of test accuracy."
    ]
    if "no-pool" in results and len(results) > 1:
        best = ranked[0]
        text.append(
            f"The least affected is {best}; "
            + (
                "pooling makes the net less sensitive to where the object is (advantage)."
                if best != "no-pool"
                else "at this scale pooling did not make the nets less shift-sensitive."
            )
        )
    r2 = {n: r["position_r2"] for n, r in results.items()}
    most, least = max(r2, key=r2.get), min(r2, key=r2.get)
    text.append(
        f"The price: a linear probe reads the image's shift from {most}'s features with R2 {r2[most]:.2f} but from "
        f"{least}'s with R2 {r2[least]:.2f}: the invariance pooling buys is position information thrown away, "
        "which a task that needs where (detection, segmentation) cannot get back (drawback). Invariance is only "
        "approximate: no variant keeps its accuracy at every shift, and augmentation with shifted images adds "
        "what the architecture alone does not give."
    )
    if cfg.train.max_batches:
        text.append(f"(train.max_batches={cfg.train.max_batches}: these nets barely trained; the numbers mean little.)")
    ctx.report.text(" ".join(text))


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    data = ctx.load_data(cfg.dataset)
    summary: dict[str, Any] = {"dataset": data.name}
    summary["locality"] = locality(data, cfg, ctx)
    x = data.test.x[:64].float().div(255)
    if min(x.shape[-2:]) < 28:  # too small for an interior away from the borders: measure on an upscaled copy
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    summary["equivariance"] = equivariance(x, cfg, ctx)
    ctx.report.save(ctx.run.path)
    summary["invariance"] = invariance(data, cfg, ctx)
    ctx.report.heading("The question, answered from these measurements")
    ctx.report.text(
        "What are the properties of CNNs, and what does each give and cost? Locality and weight sharing: "
        f"{summary['locality']['params']['conv']:,} parameters instead of "
        f"{summary['locality']['params']['dense']:,} for the same map, but a 3x3 view per layer. Equivariance: a "
        "stride-1 convolution commutes with shifts exactly (away from the zero-padded borders); striding breaks "
        "it. Invariance: pooling (and shift augmentation) trades position information for robustness to small "
        "shifts, as the tables above measure."
    )
    return summary
