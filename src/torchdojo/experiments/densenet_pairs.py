"""H1's two-modality part (used by `densenet_vs_resnet`): a DenseNet that also reads a caption, trained on an
offline image + caption task (`torchdojo.data.pairs`) against its image-only and text-only halves, with a
diagram of the fused model.
"""

import math
from typing import Any

import torch

from torchdojo import stats
from torchdojo.config import hyper_parameters
from torchdojo.data.pairs import PairBatches, PairData, ceilings, make_pairs, pair_examples
from torchdojo.engine import evaluate, fit
from torchdojo.experiments.base import Context
from torchdojo.models import build_model
from torchdojo.report import figures

VARIANTS = {"pair-image": ("image",), "pair-text": ("text",), "pair-both": ("image", "text")}


def draw_diagram(path: Any, model: Any, in_shape: tuple[int, ...], cfg: Any) -> None:
    """Boxes and arrows, sizes read from the fused `model`: image -> DenseNet branch, caption -> embedding ->
    GRU, concatenated -> MLP head."""
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4)
    ax.axis("off")
    img = "x".join(map(str, in_shape))
    blocks = ",".join(map(str, cfg.pair_block_layers))
    text = model.features.text
    vocab, embed, hidden = text.embed.num_embeddings, text.embed.embedding_dim, text.gru.hidden_size
    fuse, k = model.features.fuse[0], model.head[-1].out_features
    hid, width = fuse.out_features, fuse.in_features - text.out_features
    boxes = {
        "image": (0.2, 2.6, f"image\n{img}"),
        "dense": (2.2, 2.6, f"DenseNet\nblocks {blocks}, k={cfg.pair_growth}\n+ GAP -> {width}"),
        "caption": (0.2, 0.5, f"caption\n{cfg.caption_len} token ids"),
        "embed": (2.2, 0.5, f"Embedding\n{vocab} words -> {embed}"),
        "gru": (4.2, 0.5, f"GRU {hidden}\nlast hidden state"),
        "concat": (6.2, 1.55, f"concatenate\n{width} + {hidden} (fusion)"),
        "head": (8.1, 1.55, f"Linear {hid} + ReLU\n-> Linear head\n{k} logits (class x colour)"),
    }
    for x, y, text in boxes.values():
        ax.add_patch(plt.Rectangle((x, y), 1.7, 0.95, fc="#e8eef7", ec="#3b6ea5", lw=1.5))
        ax.text(x + 0.85, y + 0.47, text, ha="center", va="center", fontsize=8)
    for a, b in (
        ("image", "dense"),
        ("dense", "concat"),
        ("caption", "embed"),
        ("embed", "gru"),
        ("gru", "concat"),
        ("concat", "head"),
    ):
        (xa, ya, _), (xb, yb, _) = boxes[a], boxes[b]
        ax.annotate("", xy=(xb, yb + 0.47), xytext=(xa + 1.7, ya + 0.47), arrowprops={"arrowstyle": "->", "lw": 1.3})
    ax.set_title("two-modality DenseNet: image and caption features fused before the head", fontsize=10)
    figures._save(fig, path)
    plt.close(fig)


def _parts(probs: torch.Tensor, pairs: PairData) -> dict[str, float]:
    """Joint, class-only and colour-only accuracy of predictions (label = 2 * class + colour)."""
    pred = probs.argmax(1)
    n = len(pred)
    cls, col, y = pairs.image_class[:n].cpu(), pairs.colour[:n].cpu(), pairs.y[:n].cpu()
    right = pred == y
    true_word = pairs.group_word_true[:n].cpu()
    return {
        "acc": right.float().mean().item(),
        "class_acc": (pred // 2 == cls).float().mean().item(),
        "colour_acc": (pred % 2 == col).float().mean().item(),
        "acc_true_group_word": right[true_word].float().mean().item() if true_word.any() else math.nan,
        "acc_wrong_group_word": right[~true_word].float().mean().item() if (~true_word).any() else math.nan,
        "n": n,
    }


def train_variant(j: int, name: str, data: dict[str, PairData], split: Any, cfg: Any, ctx: Context) -> dict:
    """One variant (stage = its name) trained on the training pairs, tested on the test pairs."""
    train = data["train"]
    tcfg = ctx.train_config(group="pair")
    torch.manual_seed(cfg.seed + 10 + j)
    model = build_model(
        "densenet-text",
        split.train.shape,
        len(train.classes),
        vocab_size=len(train.vocab.words),
        caption_len=cfg.caption_len,
        modalities=VARIANTS[name],
        growth=cfg.pair_growth,
        block_layers=cfg.pair_block_layers,
        bn_size=cfg.bn_size,
        compression=cfg.compression,
        stem=2 * cfg.pair_growth,
    ).to(ctx.device)
    ctx.log(f"== {name} ({model.num_params():,} params)")

    def batches(p: PairData, size: int, shuffle: bool) -> PairBatches:
        return PairBatches(p, size, split.mean, split.std, shuffle=shuffle, seed=cfg.seed)

    res = fit(
        model,
        batches(train, tcfg.batch_size, True),
        batches(data["val"], tcfg.eval_batch_size, False),
        tcfg,
        device=ctx.device,
        stage=name,
        run=ctx.run,
        resume=ctx.resume,
        verbose=ctx.verbose,
    )
    ev = evaluate(
        model,
        batches(data["test"], tcfg.eval_batch_size, False),
        device=ctx.device,
        max_batches=tcfg.max_batches,
        return_outputs=True,
        channels_last=tcfg.channels_last,
    )
    parts = _parts(ev["probs"], data["test"])
    ok, why = stats.learned(
        parts["acc"],
        chance_or_majority=stats.majority_rate(data["test"].y[: parts["n"]].tolist()),
        n_eval=parts["n"],
        loss_history=[r["train_loss"] for r in res.history],
    )
    return {
        "variant": name,
        "inputs": " + ".join(VARIANTS[name]),
        "params": model.num_params(),
        **parts,
        "best_epoch": res.best_epoch,
        "learned": ok,
        "learned_reason": why,
        "history": res.history,
        "model": model,
    }


def _task_text(data: dict[str, PairData], cfg: Any, ceil: dict[str, float]) -> str:
    train = data["train"]
    groups = ", ".join(
        f"{name}: {'/'.join(words)}"
        for name, words in zip(train.vocab.group_names, train.vocab.group_words, strict=True)
    )
    return (
        f"The pair task (built offline from the same images): each image gets a generated caption of "
        f"{cfg.caption_len} tokens in random order: one colour word (dark: black/navy/dark, light: "
        f"white/cream/light), one garment-group word ({groups}) and filler words. The colour is drawn at random "
        "per example and appears only in the caption (the images are grayscale); the group word is the item's "
        f"true group with probability {1 - cfg.caption_noise:.2f}, otherwise another group's. The label is the "
        f"pair (class, colour): {len(train.classes)} labels. So the image alone can give the class but only guess "
        f"the colour (best possible accuracy {ceil['image']:.2f}); the caption alone gives the colour but only a "
        f"noisy group, so the best it can do is the most likely class of that group ({ceil['text']:.3f}); both "
        f"together can reach {ceil['both']:.0f}. Pairs: {len(train):,} training, {len(data['val']):,} validation, "
        f"{len(data['test']):,} test (test images from the test split). Image-only and text-only are the same "
        "model with one branch left out."
    )


def _z(acc: float, ceiling: float, n: int) -> float:
    """How far a measured accuracy is above a ceiling, in binomial standard errors (at the ceiling) of n items."""
    return (acc - ceiling) / math.sqrt(max(ceiling * (1 - ceiling), 1e-12) / max(n, 1))


def _fusion_verdict(by: dict[str, dict[str, Any]], ceil: dict[str, float], n: int) -> str:
    """Whether the fused model got past what either input alone can reach (more than 3 standard errors)."""
    acc = by["pair-both"]["acc"]
    z_img, z_txt = _z(acc, ceil["image"], n), _z(acc, ceil["text"], n)
    head = (
        f"fused {100 * acc:.1f}%, image-only {100 * by['pair-image']['acc']:.1f}%, text-only "
        f"{100 * by['pair-text']['acc']:.1f}% on {n:,} test pairs; the ceilings of one input alone are "
        f"{100 * ceil['image']:.1f}% (image) and {100 * ceil['text']:.1f}% (caption), and the fused accuracy is "
        f"{z_img:+.1f} and {z_txt:+.1f} standard errors from them. "
    )
    if not by["pair-both"]["learned"]:
        return head + "The fused model did not learn, so nothing is concluded about fusion."
    if min(z_img, z_txt) > 3:
        return head + "So the fused model uses both inputs: no model of one input could score this."
    return head + "The fused model did not get clearly past what one input alone allows."


def run_pairs(cfg: Any, split: Any, classes: list[str], ctx: Context) -> dict[str, Any]:
    """H1: the two-modality DenseNet on the pair task, against its image-only and text-only halves."""
    from torchdojo.data import ImageData

    def pairs_of(d: ImageData, seed: int) -> PairData:
        return make_pairs(ImageData(d.x, d.y, classes), cfg.caption_noise, cfg.caption_len, seed).to(ctx.device)

    data = {"train": pairs_of(split.train, cfg.seed), "val": pairs_of(split.val, cfg.seed + 1)}
    data["test"] = pairs_of(split.test, cfg.seed + 2)
    ceil = ceilings(data["test"], cfg.caption_noise)
    ctx.report.heading("H1.5 A two-modality DenseNet (image + caption)")
    ctx.report.text(_task_text(data, cfg, ceil))
    ctx.report.table(pair_examples(data["train"], 6), caption="the first training pairs")
    hp = hyper_parameters(ctx.train_config(group="pair"))
    ctx.report.table([{"setting": k, "value": v} for k, v in hp.items()], caption="training (pair.*, each variant)")
    rows = [train_variant(j, name, data, split, cfg, ctx) for j, name in enumerate(VARIANTS)]
    models = {r["variant"]: r.pop("model") for r in rows}
    draw_diagram(ctx.run.figure_path("pair_model"), models["pair-both"], split.train.shape, cfg)
    ctx.report.figure("pair_model.png", "the fused model: image DenseNet and caption GRU, concatenated before the head")
    figures.curves({r["variant"]: r["history"] for r in rows}, ctx.run.figure_path("pair_curves"), title="pairs")
    limit = {"pair-image": ceil["image"], "pair-text": ceil["text"], "pair-both": ceil["both"]}
    for r in rows:
        r["ceiling"] = limit[r["variant"]]
    cols = [
        "variant",
        "inputs",
        "params",
        "acc",
        "ceiling",
        "class_acc",
        "colour_acc",
        "acc_true_group_word",
        "acc_wrong_group_word",
        "best_epoch",
        "learned",
    ]
    ctx.report.table(rows, caption="test pairs: joint accuracy, its ceiling, and each part of the label", columns=cols)
    ctx.report.figure("pair_curves.png", "training (solid) and validation (dashed) curves of the three variants")
    for r in rows:
        if not r["learned"]:
            ctx.report.warning(f"{r['variant']} did not learn: {r['learned_reason']}")
    by = {r["variant"]: r for r in rows}
    learned = {n: r["learned"] or r["learned_reason"] for n, r in by.items()}
    cmp = stats.compare(
        {n: [r["acc"] for r in rows if r["variant"] == n] for n in VARIANTS},
        learned=learned,
        pairs=[("pair-both", "pair-image"), ("pair-both", "pair-text")],
    )
    text = _fusion_verdict(by, ceil, by["pair-both"]["n"])
    ctx.report.text("What the fusion buys: " + text + "\n\n" + stats.bullet_list(cmp))
    keep = ("acc", "class_acc", "colour_acc", "ceiling", "params", "learned")
    return {"text": text, "summary": {r["variant"]: {k: r[k] for k in keep} for r in rows}}
