"""`torchdojo predict [RUN_DIR] IMAGE...`: the top-k classes of images under a model you trained (a run folder's
checkpoint, rebuilt from its spec), or under a pretrained ImageNet backbone (MISSION D4)."""

import argparse

NAME = "predict"
HELP = "top-k classes of images: with a model you trained (RUN_DIR) or a pretrained ImageNet backbone"
DESCRIPTION = """Classify images and print the top-k classes.
With a run folder first (RUN_DIR), the model of one of its stages (--stage; default the last stage that
trained) is rebuilt from its best checkpoint and each image is prepared as the run prepared its test images:
converted to the model's channels (RGB -> gray, or gray -> RGB), resized to cover the model's input size and
center-cropped to it, normalised with the training set's mean and std.
Without one, a pretrained ImageNet backbone classifies photos; the default, efficientnet_lite0, works offline.
IMAGE is an image file (png, jpg, ...) or a scikit-image sample photo: skimage:chelsea, skimage:coffee,
skimage:astronaut, skimage:rocket.
Examples:
  torchdojo predict runs/ladder/20261201-101500-ab12cd shirt.png --stage cnn
  torchdojo predict skimage:chelsea
  torchdojo predict photo.jpg skimage:coffee --backbone mobilenet_v2 --download --topk 5"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="[RUN_DIR] then image files or skimage:NAME")
    p.add_argument("--stage", default=None, help="with RUN_DIR: the stage whose model predicts (default: the last)")
    p.add_argument(
        "--backbone", default=None, help="backbone name (torchdojo describe --list); default efficientnet_lite0"
    )
    p.add_argument("--topk", type=int, default=3, help="how many classes to print (default 3)")
    p.add_argument("--weights", default=None, metavar="FILE", help="a local weights file to use")
    p.add_argument("--download", action="store_true", help="allow downloading weights that are not found locally")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the weights checksum")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torchdojo.errors import DojoError

    if args.topk < 1:
        raise DojoError(f"--topk must be >= 1, got {args.topk}")
    if Path(args.images[0]).is_dir():
        return _from_run(args)
    if args.stage is not None:
        raise DojoError("--stage needs a run folder first", "torchdojo predict RUN_DIR IMAGE... --stage NAME")
    return _from_backbone(args)


def _from_run(args: argparse.Namespace) -> int:
    """The top-k classes under the model a run trained, rebuilt from its checkpoint."""
    from torchdojo import checkpoints
    from torchdojo.backbones.images import check_image
    from torchdojo.errors import DojoError

    run_dir, images = args.images[0], args.images[1:]
    backbone_flags = {
        "--backbone": args.backbone is not None,
        "--weights": args.weights is not None,
        "--download": args.download,
        "--no-verify": not args.verify,
    }
    given = [flag for flag, on in backbone_flags.items() if on]
    if given:
        raise DojoError(
            f"{', '.join(given)}: for an ImageNet backbone; {run_dir} predicts with the model it trained",
            f"drop {', '.join(given)} (or the run folder)",
        )
    if not images:
        raise DojoError(f"no image given after the run folder {run_dir}", f"torchdojo predict {run_dir} image.png")
    for spec in images:  # the cheap header checks first: a bad file is named before the model is rebuilt
        check_image(spec)
    stage, path = checkpoints.checkpoint_path(run_dir, args.stage)
    model, spec = checkpoints.load(path)
    pred = checkpoints.predict(model, images)
    for image, top in zip(images, pred.top(args.topk), strict=True):
        print(f"{image} ({spec.model}, stage {stage} of {run_dir}):")
        for rank, (i, name, p) in enumerate(top, 1):
            print(f"  {rank}. {name:<30} {p:7.2%}  (class {i})")
    return 0


def _from_backbone(args: argparse.Namespace) -> int:
    """The top-k ImageNet classes under a pretrained backbone."""
    import torch

    from torchdojo.backbones import OFFLINE_DEFAULT, load_backbone
    from torchdojo.backbones.images import check_image, preprocess, read_image

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
