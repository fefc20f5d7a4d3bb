"""The exam's short questions, measured (MISSION H4): KL divergence vs cross-entropy on concrete
distributions; when a GPU beats a CPU (time per training step across batch size and width); few vs many
tuned hyper-parameters (random searches of equal budget and the spread of their outcomes); and what to do
when a simple network performs badly (under- vs over-fitting read from the curves, each fix measured, and a
deep plain net against a residual one: deeper is not always better).
"""

import dataclasses
import math
import random
from typing import Any

import torch
from torch import nn

from torchdojo import stats
from torchdojo.config import TrainConfig
from torchdojo.data import ImageData, Splits, random_subset, stratified_split
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import fit
from torchdojo.errors import DojoError
from torchdojo.exam import divergence, search, timing
from torchdojo.experiments.base import Context
from torchdojo.report import figures

MISSION_IDS = ("H4",)
SUMMARY = "the exam's short questions measured: KL vs cross-entropy, CPU vs GPU, hyper-parameters, a poor network"
UNUSED = {
    "train.cpu_fusion": "the MLPs compared here have no BatchNorm -> ReLU -> MaxPool blocks to fuse",
    "train.channels_last": "the MLPs flatten their input at once: there is no convolution for a memory format",
    "train.label_smoothing": "the KL-vs-CE question is answered on explicit distributions; the trainings use plain "
    "cross-entropy so the diagnosis compares like with like",
}


@dataclasses.dataclass
class Config:
    dataset: str = "fashion-mnist"
    train_subset: int = 4000  # training images for the search and the diagnosis (0 = all)
    val_fraction: float = 0.2
    width: int = 128  # the MLP's hidden width where a setup does not set its own
    trials: int = 8  # random-search budget per regime (few / many knobs)
    overfit_images: int = 256  # the over-fitting setup trains on this many images
    overfit_epochs: int = 20
    deep_layers: int = 20  # the plain and residual deep nets
    batch_sizes: tuple[int, ...] = (16, 64, 256, 1024)
    widths: tuple[int, ...] = (64, 512, 2048)
    timing_steps: int = 10
    seed: int = 0
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(epochs=5, batch_size=128, optimizer="adamw", lr=1e-3)
    )

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise DojoError(f"trials must be >= 1, got {self.trials}", "--set trials=8")
        if self.deep_layers < 2:
            raise DojoError(f"deep_layers must be >= 2, got {self.deep_layers}", "--set deep_layers=20")
        if not self.batch_sizes or not self.widths or min(self.batch_sizes) < 1 or min(self.widths) < 1:
            raise DojoError("batch_sizes and widths must be positive numbers", "--set batch_sizes=16,64 widths=64")


SCALES = {
    "smoke": {
        "dataset": "digits",
        "train_subset": 0,
        "trials": 2,
        "overfit_images": 64,
        "overfit_epochs": 2,
        "deep_layers": 4,
        "batch_sizes": "8,64",
        "widths": "32,128",
        "timing_steps": 2,
        "train": {"epochs": 1, "batch_size": 64, "max_batches": 3},
    },
    "small": {},
    "full": {"train_subset": 0, "trials": 16, "train": {"epochs": 10}},
}


# ---- KL vs cross-entropy ---------------------------------------------------------------------------------


def kl_vs_ce(ctx: Context, cfg: Config) -> dict[str, Any]:
    rows, grads = divergence.example_table(), divergence.gradients(cfg.seed)
    worst = max(abs(r["CE - H - KL"]) for r in rows)
    ctx.report.heading("H4.1 KL divergence vs cross-entropy")
    ctx.report.text(
        "For distributions p (the target) and q (the model), in nats: the cross-entropy CE(p, q) = -sum p log q, "
        "the entropy H(p) = -sum p log p and KL(p || q) = sum p log(p / q)."
    )
    ctx.report.table(rows, caption="concrete distributions: CE = H(p) + KL(p || q) in every row")
    ctx.report.text(
        f"Measured: CE - H - KL is at most {worst:.1e} (rounding), so CE = H(p) + KL(p || q). For a fixed p, H(p) "
        f"is a constant: on 64 random pairs of 10-class distributions the gradients in q's logits differ by at "
        f"most {grads['q_grad_max_diff']:.1e} (largest gradient {grads['q_grad_max']:.2f}): training a model q "
        "with either loss is the same. They differ (1) in value: with a one-hot label H(p) = 0 and the two "
        "coincide, with soft labels (label smoothing, distillation) CE never reaches 0 but KL does (see the q = p "
        "row), so only KL reads as 'distance to the target'; (2) when p is learned too (e.g. a learned teacher or "
        f"prior): the gradients in p's logits differ by up to {grads['p_grad_max_diff']:.2f} (largest "
        f"{grads['p_grad_max']:.2f}), because KL's includes the -H(p) term that pushes p to spread out."
    )
    return {"examples": rows, "gradients": grads}


# ---- CPU vs GPU -------------------------------------------------------------------------------------------


def cpu_vs_gpu(ctx: Context, cfg: Config) -> dict[str, Any]:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [
        r for d in devices for r in timing.time_steps(d, cfg.batch_sizes, cfg.widths, cfg.timing_steps, seed=cfg.seed)
    ]
    ctx.report.heading("H4.2 When is a GPU faster than a CPU?")
    ctx.report.text(
        f"Median time of one SGD step (forward, backward, update) of a 2-hidden-layer MLP on 784 inputs, over "
        f"{cfg.timing_steps} steps after 3 warm-up steps, for every batch size and width, on "
        + " and ".join(d.type.upper() for d in devices)
        + f" ({torch.get_num_threads()} CPU threads)."
    )
    ctx.report.table(rows, caption="time per training step; GFLOP/s = 6 x forward MACs x batch / time")
    series = {
        f"{r0['device']} width {w}": (
            [r["batch"] for r in rows if r["width"] == w and r["device"] == r0["device"]],
            [r["ms_per_step"] for r in rows if r["width"] == w and r["device"] == r0["device"]],
        )
        for r0 in rows
        for w in cfg.widths
    }
    figures.line_plot(series, ctx.run.figure_path("h4_step_time"), "batch size", "ms per step", logy=True)
    ctx.report.figure("h4_step_time.png", "time per step against batch size, one line per width and device")
    cpu = [r for r in rows if r["device"] == "cpu"]
    small, big = min(cpu, key=lambda r: r["gflops"]), max(cpu, key=lambda r: r["gflops"])
    text = (
        f"Measured on the CPU: the smallest step (batch {small['batch']}, width {small['width']}) reaches "
        f"{small['gflops']:.2f} GFLOP/s and the largest (batch {big['batch']}, width {big['width']}) "
        f"{big['gflops']:.1f}: a small step is dominated by fixed per-operation costs, not arithmetic. "
    )
    gpu = [r for r in rows if r["device"] == "cuda"]
    if gpu:
        faster = [(c, g) for c in cpu for g in gpu if c["batch"] == g["batch"] and c["width"] == g["width"]]
        wins = [(c, g) for c, g in faster if g["ms_per_step"] < c["ms_per_step"]]
        loses = [(c, g) for c, g in faster if g["ms_per_step"] >= c["ms_per_step"]]
        text += (
            f"The GPU was faster in {len(wins)} of {len(faster)} settings"
            + (
                f" (from batch {min(c['batch'] for c, _ in wins)} at width {min(c['width'] for c, _ in wins)})"
                if wins
                else ""
            )
            + (
                f" and slower in {len(loses)} (the smallest: its kernel launches and synchronisation cost more "
                "than the arithmetic they save)."
                if loses
                else "."
            )
        )
    else:
        text += (
            "No CUDA device on this machine, so the GPU side was not measured (run it where one is present: the "
            "same table then gets a cuda half). What the CPU side shows is the condition a GPU needs: enough "
            "arithmetic per step (large batches and widths) to hide its fixed launch and transfer costs; at the "
            "smallest steps here even the CPU is far from its peak."
        )
    ctx.report.text(text)
    return {"steps": rows, "cuda": bool(gpu)}


# ---- the trainings --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    train: ImageData
    val: ImageData
    mean: Any
    std: Any
    classes: int
    in_features: int


def _data(splits: Splits, cfg: Config, dev: torch.device) -> Data:
    tr, va = stratified_split(splits.train.y, cfg.val_fraction, cfg.seed)
    tr = random_subset(tr, cfg.train_subset, cfg.seed)
    mean, std = splits.mean_std()
    return Data(
        splits.train.take(tr).to(dev),
        splits.train.take(va).to(dev),
        mean,
        std,
        len(splits.classes),
        math.prod(splits.train.shape),
    )


def _train(
    model: nn.Module, stage: str, d: Data, defaults: dict[str, Any], cfg: Config, ctx: Context, train: ImageData
) -> dict[str, Any]:
    """One stage through the engine; its history, final/best accuracies and whether it learned."""
    tcfg = ctx.train_config(defaults)
    batches = TensorBatches(train, tcfg.batch_size, d.mean, d.std, shuffle=True, seed=cfg.seed)
    val = TensorBatches(d.val, tcfg.eval_batch_size, d.mean, d.std)
    result = fit(
        model.to(ctx.device),
        batches,
        val,
        tcfg,
        device=ctx.device,
        stage=stage,
        run=ctx.run,
        resume=ctx.resume,
        verbose=ctx.verbose,
    )
    h = result.history
    last = h[-1]
    ok, why = stats.learned(
        last["val_acc"],
        chance_or_majority=stats.majority_rate(d.val.y.tolist()),
        n_eval=len(d.val),
        loss_history=[r["train_loss"] for r in h],
    )
    return {
        "history": h,
        "train_acc": last["train_acc"],
        "val_acc": last["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in h),
        "val_loss_min_epoch": min(h, key=lambda r: r["val_loss"])["epoch"],
        "epochs": len(h),
        **stats.learned_entry(ok, why),
    }


def hyper_parameters(d: Data, cfg: Config, ctx: Context) -> dict[str, Any]:
    """Two random searches of `trials` trainings each: the learning rate only, or eight knobs at once."""
    fixed = {k.partition(".")[2] for k in ctx.overrides if k.startswith("train.")}
    out: dict[str, Any] = {}
    for regime, space in search.SPACES.items():
        rng = random.Random(cfg.seed * 7919 + len(regime))
        trials = []
        for t in range(cfg.trials):
            knobs = search.draw(space, rng, fixed)
            width, dropout = knobs.get("width", cfg.width), knobs.get("dropout", 0.0)
            train_knobs = {k: v for k, v in knobs.items() if k not in search.MODEL_KNOBS}
            torch.manual_seed(cfg.seed + t)
            model = timing.mlp(d.in_features, width, d.classes, depth=2, dropout=dropout)
            r = _train(model, f"search-{regime}-{t + 1}", d, train_knobs, cfg, ctx, d.train)
            trials.append({"trial": t + 1, **knobs, "val_acc": r["val_acc"], "learned": r["learned"]})
        accs = [tr["val_acc"] for tr in trials]
        est = stats.estimate(accs)
        out[regime] = {
            "trials": trials,
            "best": max(accs),
            "worst": min(accs),
            "median": sorted(accs)[len(accs) // 2],
            "spread": est.to_dict(accs),
            "did_not_learn": sum(not tr["learned"] for tr in trials),
        }
    ctx.report.heading("H4.3 Many vs few hyper-parameters")
    ctx.report.text(
        f"The same MLP task ({len(d.train):,} training images, validation {len(d.val):,}), two random searches of "
        f"{cfg.trials} trainings each: 'few' draws the learning rate only (log-uniform 1e-4..1e-1; everything "
        "else at its default), 'many' draws eight knobs at once (learning rate, weight decay, batch size, "
        "optimizer, momentum, schedule, width, dropout)."
        + (f" You set {', '.join(sorted(fixed))}: those are fixed, not searched." if fixed else "")
    )
    for regime in out:
        ctx.report.table(out[regime]["trials"], caption=f"{regime} knobs: every trial")
    ctx.report.table(
        [
            {
                "knobs": regime,
                "best": r["best"],
                "median": r["median"],
                "worst": r["worst"],
                "std over trials": r["spread"]["std"],
                "did not learn": r["did_not_learn"],
            }
            for regime, r in out.items()
        ],
        caption="validation accuracy over the trials of each search",
    )
    figures.bars(
        {f"{g} #{t['trial']}": t["val_acc"] for g in out for t in out[g]["trials"]},
        ctx.run.figure_path("h4_search"),
        "validation accuracy",
        "every trial of both searches",
    )
    ctx.report.figure("h4_search.png", "validation accuracy of every trial")
    few, many = out["few"], out["many"]
    ctx.report.text(
        f"Measured: with the same budget the many-knob search spreads its outcomes from {100 * many['worst']:.1f}% "
        f"to {100 * many['best']:.1f}% (std {100 * many['spread']['std']:.1f} points, {many['did_not_learn']} "
        f"trial(s) that did not learn), the learning-rate-only search from {100 * few['worst']:.1f}% to "
        f"{100 * few['best']:.1f}% (std {100 * few['spread']['std']:.1f}). "
        + (
            "The best many-knob trial is higher: more knobs can reach a better setting. "
            if many["best"] > few["best"]
            else "More knobs did not find a better setting: "
        )
        + "Each extra knob multiplies the space a fixed budget must cover, so more of the trials land in poor "
        "corners and the result depends more on luck; few, well-chosen knobs are cheaper to tune and their "
        f"results easier to trust. ({cfg.trials} trials per search: a larger budget narrows this.)"
    )
    return out


def _diagnose(r: dict[str, Any]) -> str:
    """The recipe: a large train-val gap with a validation loss past its minimum is over-fitting; low training
    accuracy with a small gap is under-fitting."""
    gap = r["train_acc"] - r["val_acc"]
    if gap > 0.05 and r["val_loss_min_epoch"] < r["epochs"]:
        return f"over-fitting (train {100 * r['train_acc']:.1f}% vs val {100 * r['val_acc']:.1f}%)"
    if gap < 0.03:
        return f"under-fitting (train {100 * r['train_acc']:.1f}%, barely above val {100 * r['val_acc']:.1f}%)"
    return f"neither clearly (gap {100 * gap:.1f} points)"


def poor_network(d: Data, cfg: Config, ctx: Context) -> dict[str, Any]:
    """A deliberately poor setup of each kind, diagnosed from its curves, then the fixes measured; then a deep
    plain net against a residual one of the same depth and a shallow one."""
    few = d.train.take(random_subset(torch.arange(len(d.train)), cfg.overfit_images, cfg.seed))
    ep = {"epochs": cfg.overfit_epochs}
    setups = {
        "under: width 4, 1 layer": (lambda: timing.mlp(d.in_features, 4, d.classes, depth=1), {}, d.train),
        "fix: width 256, 2 layers": (lambda: timing.mlp(d.in_features, 256, d.classes, depth=2), {}, d.train),
        f"over: width 512, {cfg.overfit_images} images": (
            lambda: timing.mlp(d.in_features, 512, d.classes, depth=3),
            ep,
            few,
        ),
        "fix: + dropout 0.5": (lambda: timing.mlp(d.in_features, 512, d.classes, depth=3, dropout=0.5), ep, few),
        "fix: + weight decay 0.1": (
            lambda: timing.mlp(d.in_features, 512, d.classes, depth=3),
            {**ep, "weight_decay": 0.1},
            few,
        ),
        "fix: all the training images": (lambda: timing.mlp(d.in_features, 512, d.classes, depth=3), {}, d.train),
    }
    diag: dict[str, Any] = {}
    for i, (name, (build, defaults, data)) in enumerate(setups.items()):
        torch.manual_seed(cfg.seed + 100 + i)
        r = _train(build(), f"diagnose-{i + 1}", d, defaults, cfg, ctx, data)
        r["diagnosis"] = _diagnose(r)
        diag[name] = r
    depth: dict[str, Any] = {}
    nets = {
        "shallow (2 layers)": lambda: timing.mlp(d.in_features, 64, d.classes, depth=2),
        f"plain deep ({cfg.deep_layers} layers)": lambda: timing.mlp(
            d.in_features, 64, d.classes, depth=cfg.deep_layers
        ),
        f"residual deep ({cfg.deep_layers} layers)": lambda: timing.ResidualMLP(
            d.in_features, 64, d.classes, cfg.deep_layers
        ),
    }
    for i, (name, build) in enumerate(nets.items()):
        torch.manual_seed(cfg.seed + 200)
        model = build()
        g0 = _first_layer_grad(model, d)
        r = _train(model, f"depth-{i + 1}", d, {}, cfg, ctx, d.train)
        depth[name] = {**r, "first_layer_grad_at_init": g0}
    _report_poor_network(diag, depth, cfg, ctx)
    return {"diagnosis": _strip(diag), "depth": _strip(depth)}


def _first_layer_grad(model: nn.Module, d: Data) -> float:
    """The gradient norm of the first layer's weight on one batch, at initialisation."""
    x = (d.train.x[:128].float().cpu() / 255 - torch.tensor(d.mean).view(1, -1, 1, 1)) / torch.tensor(d.std).view(
        1, -1, 1, 1
    )
    loss = nn.functional.cross_entropy(model(x), d.train.y[:128].cpu())
    first = next(p for p in model.parameters() if p.ndim == 2)
    (g,) = torch.autograd.grad(loss, first)
    return float(g.norm())


def _strip(rs: dict[str, Any]) -> dict[str, Any]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in rs.items()}


def _report_poor_network(diag: dict[str, Any], depth: dict[str, Any], cfg: Config, ctx: Context) -> None:
    ctx.report.heading("H4.4 A simple network performs badly: what to do?")
    ctx.report.text(
        "The recipe: read the curves first. Training accuracy low and close to validation: the model cannot fit "
        "the data (under-fitting): make it bigger or train longer. Training accuracy high but validation far "
        "below, with the validation loss rising after an early minimum: it memorises (over-fitting): "
        "regularise (dropout, weight decay) or get more data. Each poor setup below is diagnosed by that rule "
        "from its own numbers, then each fix is trained and measured."
    )
    ctx.report.table(
        [
            {
                "setup": n,
                "train acc": r["train_acc"],
                "val acc": r["val_acc"],
                "best val acc": r["best_val_acc"],
                "val loss lowest at epoch": f"{r['val_loss_min_epoch']} of {r['epochs']}",
                "diagnosis": r["diagnosis"],
            }
            for n, r in diag.items()
        ],
        caption="poor setups and their fixes",
    )
    figures.curves({n: r["history"] for n, r in diag.items()}, ctx.run.figure_path("h4_diagnosis"), title="diagnosis")
    ctx.report.figure("h4_diagnosis.png", "train (solid) and validation (dashed) curves of every setup")
    names = list(diag)
    under, under_fix, over, *over_fixes = names
    lines = [
        f"Under-fitting: {under} is diagnosed '{diag[under]['diagnosis']}'; {under_fix} moves validation accuracy "
        f"by {100 * (diag[under_fix]['val_acc'] - diag[under]['val_acc']):+.1f} points.",
        f"Over-fitting: {over} is diagnosed '{diag[over]['diagnosis']}'; "
        + "; ".join(
            f"{f} moves it by {100 * (diag[f]['val_acc'] - diag[over]['val_acc']):+.1f} points" for f in over_fixes
        )
        + ".",
    ]
    ctx.report.text(" ".join(lines) + " (One seed each: differences of a point or two are within noise.)")
    ctx.report.table(
        [
            {
                "net": n,
                "first-layer grad at init": r["first_layer_grad_at_init"],
                "train acc": r["train_acc"],
                "val acc": r["val_acc"],
                "learned": "yes" if r["learned"] else f"no: {r['learned_reason']}",
            }
            for n, r in depth.items()
        ],
        caption=f"deeper is not always better: {cfg.deep_layers} plain layers vs the same with skip connections",
    )
    figures.curves({n: r["history"] for n, r in depth.items()}, ctx.run.figure_path("h4_depth"), title="depth")
    ctx.report.figure("h4_depth.png", "shallow, plain deep and residual deep: train (solid) and validation (dashed)")
    shallow, plain, resid = list(depth)
    ctx.report.text(
        f"Measured: the plain {cfg.deep_layers}-layer net reaches {100 * depth[plain]['val_acc']:.1f}% against "
        f"{100 * depth[shallow]['val_acc']:.1f}% for the shallow one and {100 * depth[resid]['val_acc']:.1f}% for "
        f"the residual one; its first layer's gradient at initialisation is "
        f"{depth[plain]['first_layer_grad_at_init']:.2e} against {depth[resid]['first_layer_grad_at_init']:.2e} with "
        "skip connections. "
        + (
            "Depth alone made it worse: the signal fades through many plain layers, and skip connections give it "
            "a path back. Deeper helps only when the net can still be optimised."
            if depth[plain]["val_acc"] < min(depth[shallow]["val_acc"], depth[resid]["val_acc"])
            else "At this scale the plain deep net was not the worst: the degradation needs more depth or epochs to "
            "show; the gradient column shows where it starts."
        )
    )


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    summary: dict[str, Any] = {"kl_vs_ce": kl_vs_ce(ctx, cfg)}
    summary["cpu_vs_gpu"] = cpu_vs_gpu(ctx, cfg)
    ctx.report.save(ctx.run.path)
    splits = ctx.load_data(cfg.dataset)
    summary["dataset"] = splits.name
    d = _data(splits, cfg, ctx.device)
    summary["hyper_parameters"] = hyper_parameters(d, cfg, ctx)
    ctx.report.save(ctx.run.path)
    summary["poor_network"] = poor_network(d, cfg, ctx)
    ctx.report.heading("The questions, answered from these measurements")
    hp = summary["hyper_parameters"]
    ctx.report.text(
        "KL vs cross-entropy: CE = H(p) + KL(p || q); for a fixed target they train a model identically, and they "
        "differ in value with soft targets and in gradient when the target is learned (H4.1). CPU vs GPU: a GPU "
        "pays off only when a step has enough arithmetic to hide fixed costs (H4.2). Many vs few hyper-parameters: "
        f"at {cfg.trials} trials each, the many-knob search's outcomes spread {100 * hp['many']['spread']['std']:.1f} "
        f"points (std) against {100 * hp['few']['spread']['std']:.1f} for the learning rate alone (H4.3). A poor "
        "network: diagnose from the curves, then fix what the diagnosis says; and deeper is not always better "
        "without skip connections (H4.4)."
    )
    return summary
