"""Mirrored autoencoders (MISSION G1-G2): FC and fully convolutional, each decoder layer trained to invert its
mirror encoder layer; per-layer inverse errors on held-out images against lambda = 0, tied weights and the
pseudo-inverse, and what striding, ReLU and pooling cost.
"""

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo import stats
from torchdojo.autoencoders.analysis import ae_learned, discussion, inverse_loss_cost
from torchdojo.autoencoders.analysis import seeds_text as seeds_text  # read by torchdojo.seeds for --seeds N
from torchdojo.autoencoders.inverse import layer_report, pinv_reconstruct, pseudo_inverse, relative_error
from torchdojo.autoencoders.mirrored import MirroredAutoencoder, build_conv, build_fc
from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.data import ImageData, Splits, random_subset, stratified_split
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import Step, StepOutput, fit
from torchdojo.errors import DojoError
from torchdojo.experiments.base import Context
from torchdojo.report import figures
from torchdojo.seeds import SeedSpec

MISSION_IDS = ("G1", "G2")
# --seeds N: the variant of lowest test MSE against each other; `seeds_text` adds the inverse loss's cost
COMPARE = SeedSpec(
    regimes="variants", metric="test_mse", label="test MSE", higher_is_better=False, unit="", pairs="vs-best"
)
SUMMARY = "mirrored FC and conv autoencoders whose decoder layers approximate inverses of the encoder layers"
# TrainConfig settings no stage reads (setting one is refused):
UNUSED = {
    "train.label_smoothing": "the autoencoders minimise a reconstruction MSE (+ inverse loss), not a cross-entropy "
    "over labels",
    "train.cpu_fusion": "the mirrored autoencoders have no BatchNorm -> ReLU -> MaxPool blocks to fuse (no BatchNorm "
    "at all; the pooled variant max-pools after a LeakyReLU, functionally)",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    arch: str  # fc | conv
    act: str = "leaky"
    tied: bool = False
    inverse_loss: bool = True  # False: lambda = 0
    pool: bool = False  # conv only: stride-1 conv + 2x2 max-pool instead of a stride-2 conv
    why: str = ""


VARIANTS: dict[str, Variant] = {
    "fc-lam0": Variant("fc", inverse_loss=False, why="reconstruction loss only (lambda = 0)"),
    "fc": Variant("fc", why="reconstruction + lambda x layer-wise inverse loss"),
    "fc-tied": Variant("fc", tied=True, why="decoder weights tied to the encoder's transposes (B_i = A_i^T)"),
    "conv-lam0": Variant("conv", inverse_loss=False, why="reconstruction loss only (lambda = 0)"),
    "conv": Variant("conv", why="stride-2 convs, LeakyReLU, reconstruction + lambda x inverse loss"),
    "conv-tied": Variant("conv", tied=True, why="each ConvTranspose2d shares its mirror Conv2d's kernel (adjoint)"),
    "conv-relu": Variant("conv", act="relu", why="ReLU instead of LeakyReLU: negatives are zeroed, not invertible"),
    "conv-pool": Variant("conv", pool=True, why="stride-1 conv + 2x2 max-pool; the decoder upsamples (nearest)"),
}


@dataclasses.dataclass
class Config:
    dataset: str = "fashion-mnist"  # MNIST is the seed's; Fashion-MNIST is what ships offline
    variants: tuple[str, ...] = tuple(VARIANTS)
    fc_dims: tuple[int, ...] = (512, 384, 256)  # encoder widths; the code has fc_dims[-1] units
    conv_channels: tuple[int, ...] = (16, 32, 16)  # 28x28 -> 14x14 -> 7x7 -> 4x4: a 16x4x4 = 256-unit code
    kernel: int = 3
    stride: int = 2
    padding: int = 1
    slope: float = 0.2  # LeakyReLU negative slope; its inverse multiplies negatives by 1/slope
    lam: float = 0.1  # weight of the mean relative per-layer inverse loss (1.0: inverse error halves again, MSE +50%)
    train_subset: int = 0  # training images used (0 = all)
    val_fraction: float = 0.1
    eval_images: int = 2000  # held-out test images for the per-layer metrics (0 = all)
    seed: int = 0
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(epochs=8, batch_size=128, lr=2e-3, schedule="cosine", monitor="val_loss")
    )

    def __post_init__(self) -> None:
        for v in self.variants:
            if v not in VARIANTS:
                raise DojoError(f"unknown variant {v!r}", f"variants: {', '.join(VARIANTS)}")
        if self.lam < 0:
            raise DojoError(f"lam must be >= 0, got {self.lam}")


SCALES = {
    "smoke": {
        "dataset": "digits",
        "fc_dims": "32,24,16",
        "conv_channels": "4,8,8",
        "eval_images": 64,
        "train": {"epochs": 1, "batch_size": 64, "max_batches": 3},
    },
    "small": {"train_subset": 6000, "eval_images": 1000, "train": {"epochs": 6}},
    "full": {"dataset": "mnist", "train": {"epochs": 30}},
}


def build(cfg: Config, v: Variant, in_shape: tuple[int, ...]) -> MirroredAutoencoder:
    """The autoencoder of one variant."""
    if v.arch == "fc":
        return build_fc(in_shape, cfg.fc_dims, v.act, cfg.slope, v.tied)
    if v.pool:  # same output sizes as the stride-2 version: the 2x2 pool does the downsampling
        return build_conv(in_shape, cfg.conv_channels, cfg.kernel, 1, cfg.kernel // 2, 2, v.act, cfg.slope, v.tied)
    return build_conv(in_shape, cfg.conv_channels, cfg.kernel, cfg.stride, cfg.padding, 0, v.act, cfg.slope, v.tied)


def ae_step(lam: float) -> Step:
    """Reconstruction MSE + lam x mean over layers of ||D_i(E_i(h_{i-1})) - h_{i-1}||^2 / ||h_{i-1}||^2.

    A regression objective on (images, labels) batches (the labels are ignored): the loss is a mean over the
    batch's images and there is no accuracy to log."""

    def step(model: nn.Module, batch: Any) -> StepOutput:
        x, _ = batch
        hs = model.encode_all(x)
        loss = F.mse_loss(model.decode(hs[-1]), x)
        if lam > 0:
            loss = loss + lam * torch.stack(model.inverse_errors(hs)).mean()
        return StepOutput(loss, len(x))

    return step


def _to_uint8(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return ((x.cpu() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def stride_probe(x: torch.Tensor, channels: int = 16) -> list[dict[str, Any]]:
    """One random conv layer per (kernel, stride): can its pseudo-inverse recover held-out images? Evidence for
    what striding costs, independent of training: a stride larger than the kernel never sees some pixels."""
    from torchdojo.autoencoders.inverse import encoder_matrix

    rows = []
    for k, s in ((3, 1), (3, 2), (2, 2), (1, 2), (2, 3)):
        torch.manual_seed(0)
        m = build_conv(x.shape[1:], (channels,), k, s, (k - 1) // 2 if s < k else 0, act="identity")
        a = encoder_matrix(m, 0)
        if a is None:
            continue
        enc = m.encoders[0]
        h = enc(x)
        pinv = pseudo_inverse(a)
        rec = ((h - enc.bias.view(1, -1, 1, 1)).flatten(1).double() @ pinv.t()).float().view_as(x)
        cover = F.conv_transpose2d(
            torch.ones(1, 1, *enc.out_shape[1:]), torch.ones(1, 1, k, k), None, s, enc.padding, enc.output_padding
        )
        rows.append(
            {
                "kernel": k,
                "stride": s,
                "out": "x".join(map(str, enc.out_shape)),
                "dim_ratio": h[0].numel() / x[0].numel(),
                "pixels_seen": (cover > 0).float().mean().item(),
                "pinv_rel_err": relative_error(rec, x),
            }
        )
    return rows


@dataclasses.dataclass
class Held:
    """The data every variant shares: training/validation images and the held-out test images (normalised)."""

    train: ImageData
    val: ImageData
    x: torch.Tensor  # (N, C, H, W) held-out test images, normalised
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pix_var: float  # normalised MSE x this = MSE in [0, 1] pixel units
    in_shape: tuple[int, ...]
    mean_image: torch.Tensor  # (C, H, W) the training images' mean, normalised: the do-nothing reconstruction

    def per_image_mse(self, rec: torch.Tensor) -> list[float]:
        """Each held-out image's reconstruction MSE in [0, 1] pixel units."""
        return (F.mse_loss(rec, self.x, reduction="none").flatten(1).mean(1) * self.pix_var).tolist()


def load(cfg: Config, ctx: Context) -> tuple[Splits, Held]:
    """The training/validation split (stratified, seeded, optionally a seeded subset) and the held-out images."""
    data = ctx.load_data(cfg.dataset)
    dev = ctx.device
    mean, std = data.mean_std()
    tr_idx, va_idx = stratified_split(data.train.y, cfg.val_fraction, cfg.seed)
    if cfg.train_subset:
        tr_idx = random_subset(tr_idx, cfg.train_subset, cfg.seed)
        va_idx = random_subset(va_idx, max(cfg.train_subset // 6, 256), cfg.seed + 2)
    held = random_subset(data.test, cfg.eval_images, cfg.seed + 1).to(dev)
    x_held = next(iter(TensorBatches(held, len(held), mean, std)))[0]
    pix_var = torch.tensor(std).pow(2).mean().item()
    train = data.train.take(tr_idx).to(dev)
    m, sd = torch.tensor(mean, device=dev).view(-1, 1, 1), torch.tensor(std, device=dev).view(-1, 1, 1)
    mean_image = (train.x.float().mean(0) / 255 - m) / sd
    return data, Held(train, data.train.take(va_idx).to(dev), x_held, mean, std, pix_var, data.train.shape, mean_image)


def design(data: Splits, held: Held, cfg: Config, tcfg: TrainConfig, ctx: Context) -> None:
    """The data, the layer/inverse construction, the loss, and the hyper-parameters every variant trains with."""
    in_shape = held.in_shape
    ctx.report.heading("Design")
    ctx.report.text(
        f"Data: {data.name} ({len(held.train):,} training, {len(held.val):,} validation images; the per-layer "
        f"metrics use {len(held.x):,} held-out test images), normalised per channel. Encoder layer i computes "
        "h_i = act(A_i h_{i-1} + b_i); its mirror decoder layer computes B_i act^{-1}(h_i) + c_i, so "
        "B_i = pinv(A_i), c_i = -pinv(A_i) b_i is an exact inverse wherever A_i has full column rank. The activation "
        f"is LeakyReLU (slope {cfg.slope}), whose inverse is known (negatives times {1 / cfg.slope:g}).\n\n"
        f"Loss = MSE(x_hat, x) + lambda x mean_i ||D_i(E_i(h_{{i-1}})) - h_{{i-1}}||^2 / ||h_{{i-1}}||^2 with "
        f"lambda = {cfg.lam}. The inverse term is relative, so the encoder cannot shrink it by shrinking its "
        "activations, and every layer weighs the same. Each model keeps the epoch with the best validation "
        "reconstruction MSE (the inverse term is left out of model selection so that lambda = 0 is not favoured).\n\n"
        f"FC: {' -> '.join(map(str, (in_shape[0] * in_shape[1] * in_shape[2], *cfg.fc_dims)))} and back. "
        f"Conv: channels {' -> '.join(map(str, (in_shape[0], *cfg.conv_channels)))}, {cfg.kernel}x{cfg.kernel} "
        f"kernels, stride {cfg.stride}, padding {cfg.padding}; every ConvTranspose2d gets output_padding = "
        "(in + 2p - k) mod s so its output has exactly the shape its mirror conv consumed (a stride-2 conv maps both "
        "27 and 28 to 14; output_padding says which). Stride 2 with a 3x3 kernel overlaps windows, so no pixel is "
        "skipped; the downsampling is paid for in channels. The pooled variant reaches the same sizes with stride-1 "
        "convs and a 2x2 max-pool (ceil mode, so 7 -> 4 and back), the classic design, to show what pooling costs."
    )
    hp = {**hyper_parameters(tcfg), "monitor": tcfg.monitor, "lambda": cfg.lam}
    ctx.report.table(
        [{"setting": k, "value": v} for k, v in hp.items()],
        caption="hyper-parameters every variant trained with (lambda = 0 for the -lam0 variants)",
    )


@dataclasses.dataclass
class Trained:
    """One trained variant: its table row, per-layer rows and held-out reconstructions."""

    row: dict[str, Any]
    layers: list[dict[str, Any]]
    rec: torch.Tensor
    pinv_rec: torch.Tensor | None
    per_image: list[float]  # each held-out image's reconstruction MSE
    learned: tuple[bool, str]


def train_variant(j: int, name: str, held: Held, cfg: Config, tcfg: TrainConfig, ctx: Context) -> Trained:
    """G1/G2: one variant trained (stage = its name), then measured on the held-out images: reconstruction MSE
    with the learned and the pseudo-inverse decoder, and every layer's inverse quality."""
    v, dev, x = VARIANTS[name], ctx.device, held.x
    torch.manual_seed(cfg.seed + j)
    model = build(cfg, v, held.in_shape).to(dev)
    lam = cfg.lam if v.inverse_loss else 0.0
    ctx.log(f"== {name}: {v.why} ({model.num_params():,} params)")
    batches = TensorBatches(held.train, tcfg.batch_size, held.mean, held.std, shuffle=True, seed=cfg.seed)
    vb = TensorBatches(held.val, tcfg.eval_batch_size, held.mean, held.std)
    res = fit(
        model,
        batches,
        vb,
        tcfg,
        device=dev,
        stage=name,
        run=ctx.run,
        resume=ctx.resume,
        step=ae_step(lam),
        val_step=ae_step(0.0),
        verbose=ctx.verbose,
    )
    model.eval()
    with torch.no_grad():
        rec = model(x)
        prec = pinv_reconstruct(model, x)
        hs = model.encode_all(x)
    layers = layer_report(model, x)
    for i, r in enumerate(layers):
        r["zeroed"] = (hs[i + 1] == 0).float().mean().item()  # share of units an activation/pool zeroed
    inv = [r["rel_err"] for r in layers]
    row = {
        "variant": name,
        "arch": v.arch,
        "act": v.act,
        "tied": v.tied,
        "pool": v.pool,
        "lambda": lam,
        "params": model.num_params(),
        "code": "x".join(map(str, model.code_shape)),
        "test_mse": F.mse_loss(rec, x).item() * held.pix_var,
        "pinv_decoder_mse": F.mse_loss(prec, x).item() * held.pix_var if prec is not None else float("nan"),
        "mean_inverse_err": sum(inv) / len(inv),
        "best_epoch": res.best_epoch,
        "s_per_epoch": res.seconds_per_epoch,
    }
    figures.curves({name: res.history}, ctx.run.figure_path(f"curves_{name}"), keys=("loss",), title=name)
    per_image = held.per_image_mse(rec)
    base = held.per_image_mse(held.mean_image.expand_as(x))
    learned = ae_learned(per_image, base, [r["train_loss"] for r in res.history])
    row["learned"] = learned[0]
    return Trained(row, [{"variant": name, **r} for r in layers], rec, prec, per_image, learned)


def report_reconstructions(done: dict[str, Trained], held: Held, ctx: Context) -> None:
    """G1/G2: held-out images and each variant's reconstructions (learned and pseudo-inverse decoder)."""
    recon_imgs = {"input": _to_uint8(held.x[:10], held.mean, held.std)}
    for name, t in done.items():
        recon_imgs[name] = _to_uint8(t.rec[:10], held.mean, held.std)
        if t.pinv_rec is not None and name in ("fc", "conv"):
            recon_imgs[f"{name} pinv dec."] = _to_uint8(t.pinv_rec[:10], held.mean, held.std)
    grid = [img for imgs in recon_imgs.values() for img in imgs]
    figures.image_grid(
        grid,
        ctx.run.figure_path("reconstructions"),
        ncols=10,
        row_labels=list(recon_imgs),
        title="held-out inputs (top) and their reconstructions",
    )
    ctx.report.heading("G1/G2. Reconstructions")
    ctx.report.figure(
        "reconstructions.png",
        "first row: held-out test images; each further row: one variant's "
        "reconstruction ('pinv dec.': the code decoded with the pseudo-inverse of each encoder "
        "layer; it ignores the data, so each layer's projection error is amplified by the next "
        "act^{-1}, x1/slope on negatives)",
    )
    ctx.report.table(
        [t.row for t in done.values()],
        caption="each variant on held-out images: MSE in [0, 1] pixel "
        "units (learned decoder and pseudo-inverse decoder), mean per-layer relative inverse error, "
        "parameters; learned: its held-out MSE is below predicting the training mean image (95% interval over "
        "the images) and its training loss fell",
    )
    for name, t in done.items():
        if not t.learned[0]:
            ctx.report.warning(f"{name} did not learn: {t.learned[1]}.")


def report_layers(layer_rows: list[dict[str, Any]], ctx: Context) -> None:
    """G2: each decoder layer against the inverse of its mirror encoder layer, on held-out data."""
    ctx.report.heading("Per-layer inverse quality (held-out data)")
    ctx.report.text(
        "rel_err = ||D_i(h_i) - h_{i-1}||^2 / ||h_{i-1}||^2 for the trained decoder layer; pinv_rel_err the same for "
        "the pseudo-inverse of the encoder layer (the best per-point linear inverse; it is a projection, so it is "
        "> 0 whenever the layer has fewer outputs than inputs, dim_ratio < 1); cos_to_pinv the cosine similarity of "
        "the decoder's operator B_i to pinv(A_i) as dense matrices (conv operators are materialised). zeroed: share "
        "of the layer's outputs that are exactly 0 (what ReLU throws away)."
    )
    ctx.report.table(
        layer_rows,
        caption="per layer, per variant",
        columns=["variant", "layer", "in", "out", "dim_ratio", "rel_err", "pinv_rel_err", "cos_to_pinv", "zeroed"],
    )


def report_inverse_loss(summary: dict[str, Any], per_image: dict[str, list[float]], cfg: Config, ctx: Context) -> None:
    """G1/G2: what the inverse loss buys and what it costs: lambda = 0 against lambda > 0 (untied and tied), per
    layer and overall, the reconstruction cost stated with its interval over the held-out images."""
    comparisons = []
    for arch in ("fc", "conv"):
        names = [n for n in (f"{arch}-lam0", arch, f"{arch}-tied") if n in summary]
        if f"{arch}-lam0" not in names or len(names) < 2:
            continue
        per_layer = [summary[n]["inverse_err_per_layer"] for n in names]
        for i in range(len(per_layer[0])):
            comparisons.append(
                {
                    "arch": arch,
                    "measure": f"layer {i + 1} rel. inverse error",
                    **{n: errs[i] for n, errs in zip(names, per_layer, strict=True)},
                }
            )
        comparisons.append(
            {"arch": arch, "measure": "test MSE (reconstruction)", **{n: summary[n]["test_mse"] for n in names}}
        )
    if comparisons:
        ctx.report.heading("What the inverse loss buys")
        ctx.report.table(
            comparisons,
            caption=f"per-layer relative inverse error (held-out) and reconstruction MSE: "
            f"lambda = 0 against lambda = {cfg.lam:g} (untied and tied decoder weights)",
            columns=["arch", "measure", "fc-lam0", "fc", "fc-tied", "conv-lam0", "conv", "conv-tied"],
        )
        n = len(next(iter(per_image.values())))
        ctx.report.text(
            "\n".join(inverse_loss_cost(summary, per_image, cfg.lam))
            + f"\n\nThe intervals are over the {n} held-out images, decoded by this seed's trained models: they "
            "say whether these two models differ on this data, not whether another seed would; --seeds N (e.g. "
            "--seeds 5) compares over seeds."
        )


def report_fc_vs_conv(
    summary: dict[str, Any], layer_rows: list[dict[str, Any]], held: Held, cfg: Config, ctx: Context
) -> list[dict[str, Any]]:
    """G1/G2: FC against conv, and what ReLU, pooling, tying and striding cost; the stride probe's rows."""
    probe = stride_probe(held.x[:256].cpu())
    ctx.report.heading("FC vs conv, and what non-invertible choices cost")
    ctx.report.table(
        probe,
        caption="one random conv layer (16 filters, no activation) per kernel/stride: share of "
        "pixels it ever sees and the pseudo-inverse's relative error on held-out images",
    )
    ctx.report.text(discussion(summary, layer_rows, probe))
    for name in cfg.variants:
        ctx.report.figure(
            f"curves_{name}.png",
            f"{name}: training loss (with the inverse term) and validation reconstruction MSE per epoch",
        )
    return probe


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    data, held = load(cfg, ctx)
    tcfg = ctx.train_config()
    design(data, held, cfg, tcfg, ctx)
    done = {name: train_variant(j, name, held, cfg, tcfg, ctx) for j, name in enumerate(cfg.variants)}
    summary = {}
    for name, t in done.items():
        summary[name] = {k: v for k, v in t.row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        summary[name]["inverse_err_per_layer"] = [r["rel_err"] for r in t.layers]
        summary[name].update(stats.learned_entry(*t.learned))
    layer_rows = [r for t in done.values() for r in t.layers]
    report_reconstructions(done, held, ctx)
    report_layers(layer_rows, ctx)
    report_inverse_loss(summary, {n: t.per_image for n, t in done.items()}, cfg, ctx)
    probe = report_fc_vs_conv(summary, layer_rows, held, cfg, ctx)
    return {"dataset": data.name, "variants": summary, "stride_probe": probe}
