"""DenseNet vs ResNet (MISSION H1): a small DenseNet and a ResNet of the same parameter budget trained on the
same split; accuracy curves, gradient norm per layer at initialisation and after training, parameters / MACs /
activation memory per block (calc), the feature-reuse heat map of the dense blocks, and a two-modality DenseNet
(image + caption) on an offline pair task (`densenet_pairs`).
"""

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo import stats
from torchdojo.calc import analyze
from torchdojo.config import TrainConfig, hyper_parameters
from torchdojo.data import ImageData, random_subset, stratified_split
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import evaluate, fit
from torchdojo.errors import DojoError
from torchdojo.experiments import densenet_pairs
from torchdojo.experiments.base import Context
from torchdojo.models import build_model
from torchdojo.models.densenet import SmallDenseNet, feature_reuse
from torchdojo.report import figures

MISSION_IDS = ("H1",)
SUMMARY = "DenseNet vs ResNet at a matched budget: curves, gradient norms, calc per block, feature reuse; image+text"
UNUSED = {
    "train.cpu_fusion": "neither net has a BatchNorm -> ReLU -> 2x2 max-pool block to fuse (DenseNet transitions "
    "average-pool after a 1x1 conv; the ResNet downsamples with strided convs)",
    "pair.cpu_fusion": "the pair models' DenseNet branch has no BatchNorm -> ReLU -> 2x2 max-pool block to fuse",
}


@dataclasses.dataclass
class Config:
    dataset: str = "fashion-mnist"
    train_subset: int = 0  # training images used (0 = all of the training split)
    val_fraction: float = 0.1
    eval_images: int = 0  # test images evaluated (0 = all)
    growth: int = 12  # DenseNet growth rate k: channels each dense layer adds
    block_layers: tuple[int, ...] = (4, 4, 4)  # dense layers per block
    bn_size: int = 4  # bottleneck: 1x1 conv to bn_size * k channels before each 3x3 (0 = no bottleneck)
    compression: float = 0.5  # a transition keeps this share of the channels
    resnet_width: int = 0  # ResNet widths (w, 2w, 4w); 0 = the w whose parameter count is closest to the DenseNet's
    grad_batch: int = 256  # training images of the fixed batch the per-layer gradient norms are measured on
    caption_noise: float = 0.3  # pair task: probability that the caption names a wrong garment group
    caption_len: int = 6  # pair task: caption tokens (colour word, group word, filler)
    pair_growth: int = 8  # pair task: the image branch's DenseNet growth rate
    pair_block_layers: tuple[int, ...] = (3, 3)
    seed: int = 0
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            epochs=6, batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=5e-4, schedule="onecycle"
        )
    )
    # the pair task's three models (image-only, text-only, fused): the caption encoder needs more epochs
    pair: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            epochs=10, batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=5e-4, schedule="onecycle"
        )
    )

    def __post_init__(self) -> None:
        if not 0 <= self.caption_noise < 1:
            raise DojoError(f"caption_noise must be in [0, 1), got {self.caption_noise}", "e.g. caption_noise=0.3")
        if self.caption_len < 2:
            raise DojoError(f"caption_len must be >= 2, got {self.caption_len}", "a caption holds a colour and a group")
        if self.grad_batch < 2:
            raise DojoError(f"grad_batch must be >= 2, got {self.grad_batch}", "batch norm needs 2+ images")


SCALES = {
    "smoke": {
        "train_subset": 256,
        "eval_images": 128,
        "growth": 4,
        "block_layers": "2,2",
        "grad_batch": 32,
        "pair_growth": 4,
        "pair_block_layers": "1,1",
        "train": {"epochs": 1, "batch_size": 64, "max_batches": 3},
        "pair": {"epochs": 1, "batch_size": 64, "max_batches": 3},
    },
    "small": {"train_subset": 6000, "eval_images": 5000, "train": {"epochs": 4}, "pair": {"epochs": 8}},
    "full": {"train": {"epochs": 30}, "pair": {"epochs": 30}},
}


@dataclasses.dataclass
class Split:
    train: ImageData
    val: ImageData
    test: ImageData
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def batches(self, d: ImageData, size: int, train: bool, seed: int) -> TensorBatches:
        return TensorBatches(d, size, self.mean, self.std, shuffle=train, seed=seed)


def load(cfg: Config, ctx: Context) -> tuple[Any, Split]:
    """Stratified train/validation split (seeded; a subset when asked) and the test images, on the device."""
    data = ctx.load_data(cfg.dataset)
    tr, va = stratified_split(data.train.y, cfg.val_fraction, cfg.seed)
    if cfg.train_subset:
        tr = random_subset(tr, cfg.train_subset, cfg.seed)
        va = random_subset(va, max(cfg.train_subset // 6, 256), cfg.seed + 1)
    test = random_subset(data.test, cfg.eval_images, cfg.seed + 2) if cfg.eval_images else data.test
    dev = ctx.device
    mean, std = data.mean_std()
    return data, Split(data.train.take(tr).to(dev), data.train.take(va).to(dev), test.to(dev), mean, std)


def matched_resnet_width(target: int, in_shape: tuple[int, int, int], k: int, width: int) -> int:
    """`width`, or (0) the base width w of SmallResNet(w, 2w, 4w) whose parameter count is closest to `target`."""
    if width:
        return width

    def params(w: int) -> int:
        return build_model("small-resnet", in_shape, k, widths=(w, 2 * w, 4 * w), stem=w).num_params()

    counts = {}
    for w in range(1, 1025):  # the count grows with w: stop at the first one past the target
        counts[w] = params(w)
        if counts[w] >= target:
            break
    return min(counts, key=lambda w: abs(counts[w] - target))


def build_pair(cfg: Config, in_shape: tuple[int, int, int], k: int) -> dict[str, nn.Module]:
    """The DenseNet and the ResNet of (about) the same parameter count, each from its own seed."""
    torch.manual_seed(cfg.seed)
    dense = build_model(
        "densenet",
        in_shape,
        k,
        growth=cfg.growth,
        block_layers=cfg.block_layers,
        bn_size=cfg.bn_size,
        compression=cfg.compression,
        stem=2 * cfg.growth,
    )
    w = matched_resnet_width(dense.num_params(), in_shape, k, cfg.resnet_width)
    torch.manual_seed(cfg.seed + 1)
    res = build_model("small-resnet", in_shape, k, widths=(w, 2 * w, 4 * w), stem=w)
    return {"densenet": dense, "resnet": res}


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and Linear layers on the main path, input to output (a ResNet's 1x1 shortcut projections, which sit
    beside it, are left out)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and "shortcut" not in n]


def reuse_maps(model: nn.Module) -> list[torch.Tensor]:
    """The feature-reuse matrix of each dense block (none for a net without dense blocks)."""
    return [feature_reuse(b) for b in model.blocks()] if isinstance(model, SmallDenseNet) else []


def grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    """||dL/dW|| of every conv/linear weight for one cross-entropy backward on (x, y) (train mode: batch norm on
    batch statistics, as in training); the model's gradients are cleared again."""
    was = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    rows = [
        {"depth": i, "layer": n, "grad_norm": m.weight.grad.norm().item(), "weight_norm": m.weight.norm().item()}
        for i, (n, m) in enumerate(weight_layers(model))
    ]
    model.zero_grad(set_to_none=True)
    model.train(was)
    return rows


def _grad_batch(split: Split, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    d = split.train.take(torch.arange(min(cfg.grad_batch, len(split.train)), device=split.train.x.device))
    return next(iter(split.batches(d, len(d), False, cfg.seed)))


def train_both(split: Split, cfg: Config, ctx: Context, k: int) -> dict[str, dict[str, Any]]:
    """Train each net on the same split (stage = its name); gradient norms on one fixed batch before and after,
    the DenseNet's feature reuse before and after, test accuracy of the best epoch."""
    in_shape = split.train.shape
    models = build_pair(cfg, in_shape, k)
    d, r = (m.num_params() for m in models.values())
    ctx.log(f"parameter budget: DenseNet {d:,}, ResNet {r:,} ({(r - d) / d:+.1%})")
    x, y = _grad_batch(split, cfg)
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        model.to(ctx.device)
        tcfg = ctx.train_config()
        ctx.log(f"== {name} ({model.num_params():,} params)")
        init_grads = grad_norms(model, x, y)
        init_reuse = reuse_maps(model)
        res = fit(
            model,
            split.batches(split.train, tcfg.batch_size, True, cfg.seed),
            split.batches(split.val, tcfg.eval_batch_size, False, cfg.seed),
            tcfg,
            device=ctx.device,
            stage=name,
            run=ctx.run,
            resume=ctx.resume,
            verbose=ctx.verbose,
        )
        test = evaluate(
            model,
            split.batches(split.test, tcfg.eval_batch_size, False, cfg.seed),
            device=ctx.device,
            max_batches=tcfg.max_batches,
            channels_last=tcfg.channels_last,
        )
        out[name] = {
            "model": model,
            "tcfg": tcfg,
            "fit": res,
            "test": test,
            "grads": {"init": init_grads, "trained": grad_norms(model, x, y)},
            "reuse": {"init": init_reuse, "trained": reuse_maps(model)},
        }
    return out


def report_accuracy(done: dict[str, dict[str, Any]], split: Split, ctx: Context) -> list[dict[str, Any]]:
    """H1: the two nets' parameters (the matched budget), best-epoch accuracies and curves."""
    p = {n: d["model"].num_params() for n, d in done.items()}
    gap = abs(p["densenet"] - p["resnet"]) / p["densenet"]
    rows = [
        {
            "model": n,
            "params": p[n],
            "weight layers (depth)": len(weight_layers(d["model"])),
            "best_epoch": d["fit"].best_epoch,
            "val_acc": d["fit"].history[d["fit"].best_epoch - 1].get("val_acc", float("nan")),
            "test_acc": d["test"]["acc"],
            "test images": d["test"]["n"],
            "s_per_epoch": d["fit"].seconds_per_epoch,
        }
        for n, d in done.items()
    ]
    figures.curves({n: d["fit"].history for n, d in done.items()}, ctx.run.figure_path("curves"), title="H1")
    ctx.report.heading("H1.1 Accuracy at a matched parameter budget")
    ctx.report.text(
        f"Both nets train on the same {len(split.train):,} images (validation {len(split.val):,}, stratified, "
        f"seeded) with the same settings; each keeps its best validation epoch and is tested on "
        f"{rows[0]['test images']:,} test images. Parameters: DenseNet {p['densenet']:,}, ResNet {p['resnet']:,} "
        f"({100 * gap:.1f}% apart; the ResNet's width is the one closest to the DenseNet's count)."
    )
    if gap > 0.1:
        ctx.report.warning(
            f"the parameter budgets differ by {100 * gap:.1f}% (more than 10%), so this is not a matched-budget "
            "comparison: resnet_width=0 picks the closest width, and at very small sizes even that can miss"
        )
    tcfg = done["densenet"]["tcfg"]
    ctx.report.table([{"setting": k, "value": v} for k, v in hyper_parameters(tcfg).items()], caption="training")
    ctx.report.table(rows, caption="the matched pair: parameters, depth (conv/linear layers), accuracy, time")
    ctx.report.figure("curves.png", "train (solid) and validation (dashed) loss and accuracy per epoch")
    return rows


def report_gradients(done: dict[str, dict[str, Any]], ctx: Context) -> dict[str, dict[str, float]]:
    """H1: ||dL/dW|| per layer at initialisation and after training, against relative depth."""
    series, rows, heads = {}, [], {}
    for name, d in done.items():
        for when, gs in d["grads"].items():
            n = max(len(gs) - 1, 1)
            series[f"{name} {when}"] = ([g["depth"] / n for g in gs], [g["grad_norm"] for g in gs])
            first, last = gs[0]["grad_norm"], gs[-2]["grad_norm"] if len(gs) > 1 else gs[0]["grad_norm"]
            row = {
                "model": name,
                "when": when,
                "first conv": first,
                "last conv": last,
                "first / last": first / max(last, 1e-30),
                "min over layers": min(g["grad_norm"] for g in gs),
                "max over layers": max(g["grad_norm"] for g in gs),
            }
            rows.append(row)
            heads[f"{name}_{when}"] = {k: v for k, v in row.items() if isinstance(v, float)}
    figures.line_plot(
        series,
        ctx.run.figure_path("grad_norms"),
        "relative depth (0 = first conv, 1 = classifier)",
        "||dL/dW|| (log)",
        title="gradient norm per layer, one fixed training batch",
        logy=True,
    )
    ctx.report.heading("H1.2 Gradient norm per layer")
    ctx.report.text(
        "The vanishing-gradient argument, measured: one cross-entropy backward on the same fixed batch of training "
        "images, at initialisation and with the trained weights, and the norm of each conv/linear weight's "
        "gradient. 'first / last' compares the first conv with the last conv before the classifier: far below 1 "
        "would mean the early layers barely learn. In a dense block every layer's output is concatenated into the "
        "block's output, so the loss reaches it through one short path; in a residual block the identity shortcut "
        "plays that role."
    )
    ctx.report.table(rows, caption="gradient norms (conv/linear weights)")
    ctx.report.figure("grad_norms.png", "||dL/dW|| per layer against relative depth, both nets, init and trained")
    return heads


def _block_of(name: str, model: nn.Module) -> str:
    """The top-level part a calc layer belongs to: 'features.3.layers.0.body.2' -> the 4th part of features."""
    parts = name.split(".")
    if parts[0] != "features" or len(parts) < 2 or not parts[1].isdigit():
        return "head" if parts[0] == "head" else parts[0]
    module = model.features[int(parts[1])]
    kind = type(module).__name__
    if kind in ("DenseBlock", "Transition", "ResidualBlock"):
        same = [m for m in model.features if type(m).__name__ == kind]
        return f"{kind} {same.index(module) + 1}"
    first_block = next((i for i, m in enumerate(model.features) if len(list(m.children()))), len(model.features))
    return "stem" if int(parts[1]) < first_block else "after the blocks (norm, pool)"


def per_block(model: nn.Module, in_shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    """calc's per-layer counts summed per block: parameters, MACs and activation memory (one image, fp32)."""
    a = analyze(model, in_shape)
    nodes = {n.name: n for n in a.gm.graph.nodes}
    rows: dict[str, dict[str, Any]] = {}
    for layer in a.layers:
        node = nodes.get(layer.node)
        stack = list((node.meta.get("nn_module_stack") or {}).keys()) if node is not None else []
        # a function call (torch.cat, torch.relu, +) belongs to the module whose forward made it
        key = _block_of(layer.name if node is None or node.op == "call_module" or not stack else stack[-1], model)
        r = rows.setdefault(key, {"block": key, "params": 0, "MACs": 0, "activation KiB": 0.0, "out": ""})
        r["params"] += layer.params
        r["MACs"] += layer.macs
        r["activation KiB"] += layer.act_bytes / 1024
        if layer.out_shape is not None:
            r["out"] = "x".join(map(str, layer.out_shape[1:]))
    total = {"block": "total", "params": a.total_params, "MACs": a.macs, "activation KiB": a.act_bytes / 1024}
    return [*rows.values(), total]


def report_calc(done: dict[str, dict[str, Any]], in_shape: tuple[int, int, int], ctx: Context) -> dict[str, Any]:
    """H1: parameters, MACs and activation memory per block of both nets, from calc."""
    ctx.report.heading("H1.3 Parameters, compute and memory per block (calc)")
    out, first = {}, {}
    for name, d in done.items():
        rows = per_block(d["model"], in_shape)
        ctx.report.table(rows, caption=f"{name}: per block, for one {'x'.join(map(str, in_shape))} image")
        out[name] = rows[-1]
        first[name] = next((r["out"] for r in rows if r["block"].endswith("Block 1")), "?")
    dn, rn = out["densenet"], out["resnet"]
    ctx.report.text(
        f"The first block's output is {first['densenet']} (DenseNet) and {first['resnet']} (ResNet: every residual "
        "block halves the resolution; the DenseNet halves it in the transitions between blocks). "
        f"At (about) the same parameter count the DenseNet does {dn['MACs'] / max(rn['MACs'], 1):.2f}x the "
        f"ResNet's MACs and writes {dn['activation KiB'] / max(rn['activation KiB'], 1e-9):.2f}x its activation "
        "memory per image (every layer's output, concatenations included, as calc counts them). Dense layers are "
        "narrow (growth rate channels each) and reuse earlier features instead of recomputing them, which saves "
        "parameters; the price is the repeated concatenation: each layer reads all earlier channels of its "
        "block at full resolution."
    )
    return {n: {k: v for k, v in r.items() if k != "block"} for n, r in out.items()}


def report_reuse(done: dict[str, dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """H1: the DenseNet paper's heat map, per dense block: how much each layer's first conv weighs each source."""
    plt = figures._plt()
    mats = done["densenet"]["reuse"]
    n = len(mats["trained"])
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n + 1, 6), squeeze=False)
    for row, when in enumerate(("init", "trained")):
        for b, m in enumerate(mats[when]):
            ax = axes[row][b]
            im = ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"block {b + 1}, {when}", fontsize=9)
            ax.set_xlabel("source (0 = block input)", fontsize=8)
            ax.set_ylabel("target layer", fontsize=8)
            ax.set_xticks(range(m.shape[1]))
            ax.set_yticks(range(m.shape[0]), [str(i + 1) for i in range(m.shape[0])])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="mean |w| / row max")
    figures._save(fig, ctx.run.figure_path("feature_reuse"))
    plt.close(fig)
    summary = {}
    for when in ("init", "trained"):
        vals = torch.cat([m[~m.isnan()] for m in mats[when]])
        inputs = torch.stack([m[1:, 0].mean() for m in mats[when] if m.shape[0] > 1] or [torch.tensor(float("nan"))])
        summary[when] = {
            "mean": vals.mean().item(),
            "min": vals.min().item(),
            "block_input_later": inputs.mean().item(),
        }
    ctx.report.heading("H1.4 Feature reuse")
    ctx.report.text(
        "For each dense layer (row) and each source of its input channels (column 0: the block's input, column j: "
        "dense layer j), the mean absolute weight its first conv puts on that source's channels, divided by the "
        "row's largest value (as in the DenseNet paper's figure). At initialisation the weights are i.i.d., so "
        f"every entry is close to 1 (mean {summary['init']['mean']:.2f}); after training the mean is "
        f"{summary['trained']['mean']:.2f} (smallest entry {summary['trained']['min']:.2f}), and layers 2.. put "
        f"{summary['trained']['block_input_later']:.2f} of their row maximum on the block input on average. "
        "Entries well above 0 far from the diagonal mean later layers read early features directly: reuse."
    )
    ctx.report.figure("feature_reuse.png", "mean |weight| per (target layer, source), per block: init (top), trained")
    return summary


def _cost_text(acc: list[dict[str, Any]], blocks: dict[str, Any]) -> str:
    """The matched pair's compute and memory, as ratios DenseNet / ResNet, in words."""
    macs = blocks["densenet"]["MACs"] / max(blocks["resnet"]["MACs"], 1)
    mem = blocks["densenet"]["activation KiB"] / max(blocks["resnet"]["activation KiB"], 1e-9)

    def word(r: float) -> str:
        return "about the same" if 0.8 < r < 1.25 else ("more" if r > 1 else "less")

    return (
        f"at {acc[0]['params']:,} vs {acc[1]['params']:,} parameters the DenseNet needs {macs:.2f}x the ResNet's "
        f"MACs ({word(macs)}) and {mem:.2f}x its activation memory ({word(mem)}) per image."
    )


def conclude(acc: list[dict[str, Any]], grads: dict[str, Any], blocks: dict[str, Any], pair: dict, ctx: Context) -> str:
    """The question this run answers and a short answer from its numbers."""
    test = {r["model"]: r["test_acc"] for r in acc}
    n = acc[0]["test images"]
    learned = {m: stats.learned(test[m], chance_or_majority=0.1, n_eval=n)[0] for m in test}
    cmp = stats.compare({m: [v] for m, v in test.items()}, learned=learned, pairs=[("densenet", "resnet")])[0]
    g = {k: v["first / last"] for k, v in grads.items()}
    answer = (
        f"- Accuracy: {cmp.text}\n"
        f"- Gradients: first/last conv gradient-norm ratio at init DenseNet {g['densenet_init']:.3g}, ResNet "
        f"{g['resnet_init']:.3g}; trained {g['densenet_trained']:.3g} and {g['resnet_trained']:.3g}. "
        + (
            "Every ratio (both nets, init and trained) is within 10x of 1, so no net's early layers are starved "
            "of gradient: with short paths to the loss (concatenation or identity shortcuts) and batch norm, "
            "nothing vanishes at this depth."
            if all(0.1 < v < 10 for v in g.values())
            else "Outside 10x of 1 (the early layers get far less, or far more, gradient than the last ones): "
            + ", ".join(f"{k} {v:.3g}" for k, v in g.items() if not 0.1 < v < 10)
            + "."
        )
        + f"\n- Cost: {_cost_text(acc, blocks)}\n"
        f"- Two modalities: {pair['text']}\n"
        "- When DenseNet suits a problem: small data or a small parameter budget where reusing features pays "
        "(fewer parameters for the accuracy), and tasks that profit from features of several depths at once "
        "(fine textures and coarse shapes, segmentation); less so where activation memory or latency is the limit."
    )
    ctx.report.heading("Question and answer")
    ctx.report.text(
        "Question: how do dense connections differ from residual ones, do they ease vanishing gradients, reuse "
        "features and save parameters at a matched budget, when does DenseNet suit a problem, and how can it take "
        "two modalities (image and text)?\n\nAnswer, from this run's measurements:\n\n" + answer
    )
    return cmp.verdict


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    data, split = load(cfg, ctx)
    k = len(data.classes)
    done = train_both(split, cfg, ctx, k)
    acc = report_accuracy(done, split, ctx)
    grads = report_gradients(done, ctx)
    blocks = report_calc(done, split.train.shape, ctx)
    reuse = report_reuse(done, ctx)
    ctx.report.save(ctx.run.path)
    pair = densenet_pairs.run_pairs(cfg, split, data.classes, ctx)
    verdict = conclude(acc, grads, blocks, pair, ctx)
    return {
        "dataset": data.name,
        "models": {r["model"]: {k: v for k, v in r.items() if isinstance(v, (int, float))} for r in acc},
        "grad_norms": grads,
        "per_block_totals": blocks,
        "feature_reuse": reuse,
        "pairs": pair["summary"],
        "densenet_vs_resnet": verdict,
    }
