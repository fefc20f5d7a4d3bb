"""`torchdojo describe BACKBONE`: architecture outline, preprocessing, sizes and parameter counts (D4, D6)."""

import argparse

NAME = "describe"
HELP = "a backbone's architecture outline, input size, preprocessing, output sizes and parameter counts"
DESCRIPTION = """Describe a registered backbone: stages with their blocks, output shapes and channels; the input size
and preprocessing its weights expect; feature and output sizes; total and trainable parameters under the
frozen, finetune and scratch regimes. Works without the weights (architecture only).
Examples:
  torchdojo describe mobilenet_v2
  torchdojo describe efficientnet_lite0 --num-classes 10 --head mlp
  torchdojo describe --list"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("backbone", nargs="?", default=None, help="backbone name")
    p.add_argument("--list", action="store_true", help="list the registered backbones and where their weights are")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the new head (default: ImageNet's 1000)")
    p.add_argument("--head", choices=["linear", "mlp"], default="linear", help="head for the parameter counts")
    p.add_argument("--input-size", type=int, default=None, help="input side for the shapes (default: the weights')")


def _list() -> int:
    from rich.console import Console
    from rich.table import Table

    from torchdojo.backbones import BACKBONES

    t = Table(title="backbones (torchdojo describe NAME, torchdojo predict --backbone NAME)")
    for col in ("name", "description", "weights", "found at"):
        t.add_column(col)
    for name in BACKBONES:
        spec = BACKBONES.get(name)
        found = next((str(p) for p in spec.weights.candidates() if p.is_file()), "[yellow]not found (--download)")
        t.add_row(name, spec.description, spec.weights.filename, found)
    Console().print(t)
    return 0


def main(args: argparse.Namespace) -> int:
    from torchdojo.backbones.outline import describe
    from torchdojo.errors import DojoError

    if args.list:
        return _list()
    if not args.backbone:
        raise DojoError("no backbone given", "torchdojo describe NAME; see torchdojo describe --list")
    print(describe(args.backbone, num_classes=args.num_classes, head=args.head, input_size=args.input_size))
    return 0
