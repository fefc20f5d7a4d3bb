"""A backbone described in words: stages, blocks, output shapes, preprocessing, parameters per regime."""

import torch
from torch import nn

from torchdojo.backbones.classifier import BackboneClassifier, count_params, make_head, set_regime
from torchdojo.backbones.zoo import BACKBONES


def stage_shapes(model: BackboneClassifier, input_size: int) -> list[dict[str, object]]:
    """Each trunk stage's name, block count, output shape and parameter count, for one 3xSxS image."""
    rows = []
    x = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        for name, stage in model.spec.stages(model.features):
            x = stage(x)
            blocks = len(stage) if isinstance(stage, nn.Sequential) else 1
            kinds = sorted({type(m).__name__ for m in (stage if isinstance(stage, nn.Sequential) else [stage])})
            rows.append(
                {
                    "stage": name,
                    "blocks": blocks,
                    "layers": ", ".join(kinds)[:48],
                    "output": "x".join(map(str, x.shape[1:])),
                    "params": sum(p.numel() for p in stage.parameters()),
                }
            )
    return rows


def regime_counts(model: BackboneClassifier, num_classes: int, head: str) -> dict[str, tuple[int, int]]:
    """(total, trainable) parameters with a fresh `head` for `num_classes`, under each regime."""
    model.head = make_head(model.num_features, num_classes, head)
    out = {}
    for regime in ("frozen", "finetune", "scratch"):
        set_regime(model, regime)
        out[regime] = count_params(model)
    return out


def describe(name: str, num_classes: int = 1000, head: str = "linear", input_size: int | None = None) -> str:
    """The text `torchdojo describe NAME` prints."""
    spec = BACKBONES.get(name)
    net = spec.build()
    trunk, classifier = spec.split(net)
    model = BackboneClassifier(spec, trunk, classifier, pretrained=False).eval()
    size = input_size or spec.preprocessing.input_size
    rows = stage_shapes(model, size)
    lines = [
        f"{name}: {spec.description}",
        "",
        f"input:          3x{size}x{size} RGB",
        f"preprocessing:  {spec.preprocessing.describe()}",
        f"features:       {spec.num_features} per image (output of the trunk: every stage below)"
        + (f"; {spec.trunk_note}" if spec.trunk_note else ""),
        f"output:         {len(spec.classes())} ImageNet class scores ({type(classifier).__name__} "
        f"{spec.num_features} -> {len(spec.classes())}; softmax gives probabilities)",
        f"weights:        {spec.weights.filename} (SHA-256 {spec.weights.sha256_prefix}...)"
        + (f", pip package {spec.weights.package}" if spec.weights.package else "")
        + (f", {spec.weights.url}" if spec.weights.url else ""),
        "",
        "architecture outline:",
    ]
    w = max(len(str(r["stage"])) for r in rows)
    lines.append(f"  {'stage':<{w}}  {'blocks':>6}  {'output (CxHxW)':>15}  {'params':>12}  layers")
    for r in rows:
        lines.append(f"  {r['stage']:<{w}}  {r['blocks']:>6}  {r['output']:>15}  {r['params']:>12,}  {r['layers']}")
    total_in = sum(p.numel() for p in net.parameters())
    lines += [
        "",
        f"parameters of the ImageNet model: {total_in:,} (trunk {sum(r['params'] for r in rows):,} + "
        f"classifier {sum(p.numel() for p in classifier.parameters()):,})",
        f"parameters with a new {head} head for {num_classes} classes:",
    ]
    for regime, (total, trainable) in regime_counts(model, num_classes, head).items():
        what = {
            "frozen": "trunk frozen, head trained",
            "finetune": "pretrained trunk + head trained",
            "scratch": "random init, all trained",
        }[regime]
        lines.append(f"  {regime:<9} total {total:>12,}  trainable {trainable:>12,}  ({what})")
    return "\n".join(lines)
