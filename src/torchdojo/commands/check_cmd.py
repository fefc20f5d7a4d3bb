"""`torchdojo check TARGET FILE.py:Class`: verify a hand-written layer against PyTorch (an autograder)."""

import argparse
import sys

NAME = "check"
HELP = "verify a hand-written Conv2d / ConvTranspose2d / RNN cell against PyTorch (forward and gradients)"
DESCRIPTION = """Load an implementation and run a parity suite against PyTorch: named edge cases (batch 1, one
channel, non-square inputs and kernels, stride > kernel, padding > kernel, kernel = input) in float32 and
float64, then random configurations drawn by hypothesis. Forward values, input gradients and parameter
gradients must match to 1e-5 (float32) / 1e-10 (float64), relative to 1 + |torch|.
Constructors the implementation must accept (as keywords):
  conv2d          (in_channels, out_channels, kernel_size=(kh, kw), stride=int, padding=int)  vs nn.Conv2d
  conv-transpose  the same                                                           vs nn.ConvTranspose2d
  rnn-cell        (input_size, hidden_size); forward(x (B, I), h (B, H)) -> h'          vs nn.RNNCell
Parameters are matched to torch's by name (weight, bias, weight_ih, ...), else by shape in order.
Exit code: 0 every property passes, 1 a property failed, 2 the implementation could not be loaded.
Examples:
  torchdojo check conv2d my_conv.py:MyConv2d
  torchdojo check conv2d torchdojo.nn.conv:Conv2d --examples 500
  torchdojo check rnn-cell cells.py:Elman --case '{"init": {...}, ...}'   (paste from a failure)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=["conv2d", "conv-transpose", "rnn-cell"], help="what the class implements")
    p.add_argument("implementation", metavar="FILE.py:Class", help="the class to check (or package.module:Class)")
    p.add_argument("--examples", type=int, default=200, help="random configurations to draw (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random configurations and values")
    p.add_argument("--case", default=None, metavar="JSON", help="run only this case (printed under a failure)")


def _signature_problem(cls: type, init: dict) -> str | None:
    import inspect

    try:
        inspect.signature(cls).bind(**init)
    except TypeError as e:
        return f"{cls.__name__}{inspect.signature(cls)} cannot be called with keywords {', '.join(init)}: {e}"
    except ValueError:  # no introspectable signature: let the call itself tell
        return None
    return None


def main(args: argparse.Namespace) -> int:
    import json

    from torchdojo.errors import DojoError
    from torchdojo.verify.core import format_report, run_suite
    from torchdojo.verify.load import LoadFailure, load_class
    from torchdojo.verify.targets import TARGETS

    target = TARGETS[args.target]
    only = None
    if args.case is not None:
        try:
            only = json.loads(args.case)
            assert isinstance(only, dict) and {"init", "shape", "dtype", "seed"} <= only.keys()
        except (json.JSONDecodeError, AssertionError):
            raise DojoError(
                "--case must be the JSON printed after 'reproduce:' (keys init, shape, dtype, seed)",
                "copy the whole --case '...' argument from the failure report",
            ) from None
    if args.examples < 0:
        raise DojoError(f"--examples must be >= 0, got {args.examples}")
    try:
        cls, path = load_class(args.implementation)
    except LoadFailure as e:
        print(f"torchdojo check {target.name}: {args.implementation}\nFAIL  load: {e}")
        return 2
    problem = _signature_problem(cls, (only or target.edge_cases[0][1])["init"])
    if problem:
        print(
            f"torchdojo check {target.name}: {args.implementation} against {target.reference}\n"
            f"FAIL  constructor: {problem}"
        )
        return 1
    if args.examples and only is None:
        try:
            import hypothesis  # noqa: F401
        except ImportError:
            raise DojoError(
                "random configurations need the hypothesis package",
                "pip install 'torchdojo[verify]' (or pass --examples 0 for the edge cases only)",
            ) from None
    tallies, n_edge, n_random = run_suite(cls, target, path, args.examples, args.seed, only)
    print(format_report(tallies, target, args.implementation, cls.__name__, n_edge, n_random, args.seed))
    sys.stdout.flush()
    return 0 if all(t.ok for t in tallies) else 1
