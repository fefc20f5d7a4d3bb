"""`torchdojo check TARGET FILE.py:Class`: verify a hand-written layer against PyTorch, isolated (an autograder)."""

import argparse
import sys

NAME = "check"
HELP = "verify a hand-written layer (conv, conv backward, STE, RNN cells) against PyTorch, in an isolated process"
DESCRIPTION = """Run a parity suite against PyTorch in a separate, jailed process: named edge cases in float32 and
float64, then random configurations drawn by hypothesis from the seed(s). Forward values, input and parameter
gradients must match to 1e-5 (float32) / 1e-10 (float64), relative to 1 + |torch|, with torch's dtype.
The submission runs in its own process (time, CPU, memory, file-size and process limits; an empty working
folder; no network where the kernel allows it); only tensors come back, and the reference and the comparison
run here. Conv targets also check the rules of A1 (no built-in convolution) in the source and in the ATen ops
that ran: --allow-builtin turns that off.
Targets (the submission's contract):
  conv2d           nn.Module (in_channels, out_channels, kernel_size=(kh, kw), stride=int, padding=int)
  conv2d-backward  autograd.Function: forward(ctx, x, weight, bias, stride: int, padding: int); backward
                   (apply gets these 5; further forward parameters need defaults, as torchdojo.nn.conv's has)
  conv-transpose   nn.Module, the conv2d constructor                         vs nn.ConvTranspose2d
  ste              autograd.Function apply(x) or nn.Module(): sign (sign(0) = +1), gradient g * [|x| <= 1]
  rnn-cell         nn.Module (input_size, hidden_size); forward(x (B, I), h (B, H)) -> h'  vs nn.RNNCell
  reset-cell       the same; h' = tanh(W_ih x + b_ih + W_hh h + b_hh) * sigmoid(W_r x + b_r)
  lipschitz-rnn    the same; h' = A h + tanh(W h + U x + b)
Parameters are matched to the reference's by name (weight, bias, weight_ih, A, ...), else by shape in order.
The public seed is 0 (what students run); instructors grade with other --seed values over the same properties.
Exit code: 0 every property passes, 1 a property or the run failed, 2 the class could not be loaded.
Examples:
  torchdojo check conv2d my_conv.py:MyConv2d
  torchdojo check conv2d-backward grads.py:Conv2dFn --seed 7 --seed 8 --max-examples 200
  torchdojo check rnn-cell cells.py:Elman --case '{"init": {...}, ...}'   (paste from a failure)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from torchdojo.verify.options import TARGET_NAMES  # torch-free: --help never imports torch

    p.add_argument("target", choices=TARGET_NAMES, help="what the class implements")
    p.add_argument("implementation", metavar="FILE.py:Class", help="the class to check (or package.module:Class)")
    p.add_argument("--max-examples", "--examples", dest="examples", type=int, default=50, metavar="N",
                   help="random configurations per seed (default 50)")  # fmt: skip
    p.add_argument("--seed", type=int, action="append", default=None, metavar="N",
                   help="seed of the cases (repeatable; default: the public seed 0)")  # fmt: skip
    p.add_argument("--case", default=None, metavar="JSON", help="run only this case (printed under a failure)")
    p.add_argument("--allow-builtin", action="store_true", help="skip the rules (built-in layers allowed)")
    add_limit_arguments(p)
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """--timeout, --cpu-s, --memory-mb, --file-mb, --nproc, --output-kb (shared with `grade`)."""
    from torchdojo.verify.options import Limits  # torch-free

    d = Limits()
    g = p.add_argument_group("limits of the submission's process")
    g.add_argument("--timeout", dest="wall_s", type=float, default=d.wall_s, metavar="S", help="wall clock (s)")
    g.add_argument("--cpu-s", type=float, default=d.cpu_s, metavar="S", help="CPU time (s)")
    g.add_argument("--memory-mb", type=int, default=d.memory_mb, metavar="MB", help="memory on top of torch")
    g.add_argument("--file-mb", type=int, default=d.file_mb, metavar="MB", help="largest file; cap on its output")
    g.add_argument("--nproc", type=int, default=d.nproc, metavar="N", help="extra processes/threads it may start")
    g.add_argument("--output-kb", type=int, default=d.output_kb, metavar="KB", help="stdout/stderr kept, each")


def limits_from(args: argparse.Namespace) -> "object":
    """The Limits the limit flags give."""
    from torchdojo.verify.options import Limits

    return Limits(args.wall_s, args.cpu_s, args.memory_mb, args.file_mb, args.nproc, args.output_kb)


def _parse_case(text: str) -> dict:
    import json

    from torchdojo.errors import DojoError

    try:
        case = json.loads(text)
        assert isinstance(case, dict) and {"init", "shape", "dtype", "seed"} <= case.keys()
        assert case["dtype"] in ("float32", "float64") and isinstance(case["shape"], dict)
    except (json.JSONDecodeError, AssertionError):
        raise DojoError(
            "--case must be the JSON printed after 'reproduce:' (keys init, shape, dtype, seed)",
            "copy the whole --case '...' argument from the failure report",
        ) from None
    return case


def exit_code(verdict: "object") -> int:
    """0 every property passed, 2 the class could not be loaded, 1 anything else failed."""
    return 0 if verdict.ok else 2 if verdict.failure_kind == "load" else 1


def main(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from torchdojo.errors import DojoError
    from torchdojo.verify.sandbox import check_isolated
    from torchdojo.verify.targets import TARGETS
    from torchdojo.verify.text import format_output, format_verdict

    cases = [_parse_case(args.case)] if args.case is not None else None
    if args.examples and cases is None:
        try:
            import hypothesis  # noqa: F401
        except ImportError:
            raise DojoError(
                "random configurations need the hypothesis package",
                "pip install 'torchdojo[verify]' (or pass --max-examples 0 for the edge cases only)",
            ) from None
    limits = limits_from(args)
    verdict = check_isolated(
        args.target, args.implementation, max_examples=args.examples, seeds=args.seed,
        allow_builtin=args.allow_builtin, limits=limits, cases=cases,
    )  # fmt: skip
    if args.json:
        print(json.dumps({**dataclasses.asdict(verdict), "ok": verdict.ok}, indent=1))
    else:
        print(format_verdict(verdict, TARGETS[args.target].reference_name, limits, cases is not None))
        output = format_output(verdict, limits)
        if output:
            print("\n" + output)
    sys.stdout.flush()
    return exit_code(verdict)
