"""`torchdojo calc`: per-layer shapes, params, MACs/FLOPs, memory and receptive field of a model or spec."""

import argparse

NAME = "calc"
HELP = "architecture calculator: shapes, params, MACs/FLOPs, memory, receptive field per layer"
DESCRIPTION = """Architecture calculator. Measures every layer of a model from its torch.fx graph.

  torchdojo calc resnet18 --input 3x224x224
  torchdojo calc cnn --input 1x28x28 --format markdown
  torchdojo calc mypkg.nets:Net --input 3x64x64 --erf
  torchdojo calc googlenet --train-mode --batch 2
  torchdojo calc "torch.nn.LSTM(32, 64, 2)" --input 100x32
  torchdojo calc --spec "3x128x128 | conv 5 s2 p2 64 relu | conv 5 s2 p2 128 relu | flatten | fc 200 softmax"

MODEL is a registered torchdojo model, a torchvision classification model (random weights, nothing is
downloaded), MODULE:ATTR (a module instance, or a class/function that builds one without arguments;
MODULE may be a .py file) or one built-in layer written as torch.nn.NAME(literal arguments) (parsed, never
executed). A bare nn.RNN/LSTM/GRU takes --input TxF (time steps x features; default 32 x its input size),
laid out (T, batch, F), or (batch, T, F) with batch_first=True.

The model is measured in eval mode (the inference graph, as torchvision and the papers count it);
--train-mode measures the training graph instead (e.g. googlenet's and inception_v3's auxiliary
classifiers). A model torch.fx cannot trace (Python control flow on tensor values) is measured by forward
hooks on its leaf modules: shapes, params and MACs per leaf, no receptive fields (the summary says why).
Receptive fields are given twice: strict (every dependency: a squeeze-excitation gate makes it 'all') and
conv path (without gates broadcast over the image, the figure papers quote).

--spec builds a textbook network and prints each closed-form formula beside the measured value.
Spec: the input shape without the batch (CxHxW, or F for a vector), then layers
separated by '|':
  conv K[xK2] [sS] [pP|same] [dD] [gG] [nobias] N [act]     convt K [sS] [pP] N [act]
  dsconv K [sS] [pP] N [act]  (depthwise KxK, then pointwise 1x1 to N channels)
  pool max|avg K [sS] [pP]   maxpool K   avgpool K   gap (global average pool + flatten)
  bn   dropout [P]   flatten   fc N [act]   rnncell IN HIDDEN   yolo v1|v2|v3 classes=C [boxes=B] [grid=S]
  activations: relu relu6 sigmoid tanh gelu silu leakyrelu elu softmax
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="registered model, torchvision model name, or module:attr")
    p.add_argument(
        "--input",
        default=None,
        help="input shape without the batch: CxHxW (default 3x224x224), TxF for a recurrent layer",
    )
    p.add_argument("--spec", default=None, help="a textbook network instead of MODEL (grammar above)")
    p.add_argument("--batch", type=int, default=1, help="batch size the counts are for (default 1)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default 10 / 1000)")
    p.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="PREFIX",
        help="mark parameters whose name starts with PREFIX as frozen (repeatable)",
    )
    p.add_argument(
        "--train-mode",
        action="store_true",
        help="measure the training graph (auxiliary heads, dropout) instead of the eval graph",
    )
    p.add_argument("--format", choices=["table", "markdown", "csv", "json"], default="table")
    p.add_argument(
        "--erf",
        nargs="?",
        const="",
        default=None,
        metavar="LAYER",
        help="also measure the empirical receptive field (gradient of the centre unit of LAYER, "
        "default the last spatial layer, w.r.t. the input)",
    )
    p.add_argument("--erf-png", default=None, help="save the gradient map of --erf to this PNG")


def _shape(text: str) -> tuple[int, ...]:
    from torchdojo.errors import DojoError

    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise DojoError(f"--input {text!r} is not a shape", "give CxHxW without the batch, e.g. 3x224x224")
    return shape


def main(args: argparse.Namespace) -> int:
    from torchdojo.calc import analyze, check_spec
    from torchdojo.calc import format as fmt
    from torchdojo.calc.resolve import default_input, resolve_model
    from torchdojo.errors import DojoError

    checks = None
    if args.spec:
        if args.model:
            raise DojoError("give either MODEL or --spec, not both", "drop one of them")
        if args.train_mode:
            raise DojoError(
                "--train-mode measures a MODEL's training graph; a --spec network's closed forms are for inference",
                "drop --train-mode",
            )
        if args.batch < 1:
            raise DojoError("--batch must be >= 1", "use --batch 1")
        spec, a, checks = check_spec(args.spec, batch=args.batch)
        model = spec.model
    else:
        if not args.model:
            raise DojoError("no model given", "torchdojo calc resnet18 --input 3x224x224, or --spec '...'")
        given = _shape(args.input) if args.input else None
        model = resolve_model(args.model, given or (3, 224, 224), args.num_classes)
        shape = given or default_input(model)
        for name, p in model.named_parameters():
            if any(name.startswith(prefix) for prefix in args.freeze):
                p.requires_grad_(False)
        if args.batch < 1:
            raise DojoError("--batch must be >= 1", "use --batch 1")
        a = analyze(model, shape, batch=args.batch, name=args.model, train=args.train_mode)
    if args.format == "markdown":
        print(fmt.markdown(a, checks))
    elif args.format == "csv":
        print(fmt.to_csv(a), end="")
    elif args.format == "json":
        print(fmt.to_json(a, checks))
    else:
        fmt.print_rich(a, checks)
    if args.erf is not None:
        _erf(a, args.erf or None, args.erf_png)
    if checks and not all(c["match"] for c in checks):
        return 1
    return 0


def _erf(a, layer: str | None, png: str | None) -> None:
    """Print the gradient-based support of one unit next to the analytic field (and save the map)."""
    from torchdojo.calc import format as fmt
    from torchdojo.calc.receptive import gradient_map, support
    from torchdojo.errors import DojoError

    if a.gm is None:
        raise DojoError(f"--erf needs the model's graph: {a.note.split('. ')[0]}", "drop --erf")
    nchw = tuple(range(2, len(a.example_shape)))  # gradient_map reads the unit at (0, :, *position)
    spatial = [r for r in a.layers if r.spatial and r.spatial_axes == nchw]
    if layer:
        spatial = [r for r in a.layers if layer in (r.name, r.node)]
        if not spatial:
            raise DojoError(f"--erf: no layer {layer!r}", "use a name from the table's first column")
    if not spatial:
        raise DojoError("--erf: the model has no layer with spatial output", "it needs a CxHxW input and convs")
    row = spatial[-1]
    grad = gradient_map(a.gm, a.input_shape, row.node)
    size = support(grad)
    print(
        f"empirical receptive field of {row.name} (centre unit, |d unit / d input| over 4 random inputs): "
        f"support {'x'.join(map(str, size))} input px; analytic {fmt.rf_text(row.rf)[0]} px strict, "
        f"{fmt.rf_text(row.rf_path)[0]} px conv path "
        "(the support is clipped by the input borders and can shrink where ReLU or max-pool gate the "
        "gradient)"
    )
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        g = grad if grad.dim() == 2 else grad.unsqueeze(0)
        ax.imshow(g.numpy(), cmap="magma")
        ax.set_title(f"ERF of {row.name}")
        fig.savefig(png, dpi=100, bbox_inches="tight")
        plt.close(fig)
        print(f"saved {png}")
