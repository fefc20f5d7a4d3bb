"""`torchdojo explain TOPIC`: the hand calculations of A2 (conv backprop) and A3 (transposed conv)."""

import argparse

NAME = "explain"
HELP = "work a convolution's backprop or a transposed convolution by hand, then check it with PyTorch"
DESCRIPTION = """Print a calculation step by step, then check it numerically against PyTorch.
  conv-backprop    for X (default 3x3) and K (default 2x2): every Y, every dC/dK_ab and every dC/dX_ij as a
                   sum of dC/dY_ij terms; then the formulas evaluated on random numbers vs autograd
  transposed-conv  each input element's kernel stamp, their sum, the padding crop, and PyTorch's answer
Exit code 0 when the check passes, 1 when it does not.
Examples:
  torchdojo explain conv-backprop
  torchdojo explain conv-backprop --input-size 4x4 --kernel-size 2x2 --stride 2
  torchdojo explain transposed-conv --input "1 2; 3 4" --kernel "1 2; 3 4"
  torchdojo explain transposed-conv --input "1 2; 3 4" --kernel "1 0 1; 0 1 0" --stride 2 --padding 1"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", choices=["conv-backprop", "transposed-conv"], help="what to work through")
    p.add_argument("--input-size", default="3x3", help="conv-backprop: size of X as HxW (default 3x3)")
    p.add_argument("--kernel-size", default="2x2", help="conv-backprop: size of K as HxW (default 2x2)")
    p.add_argument("--input", default="1 2; 3 4", help='transposed-conv: the input, rows split by ";"')
    p.add_argument("--kernel", default="1 2; 3 4", help='transposed-conv: the kernel, rows split by ";"')
    p.add_argument("--stride", type=int, default=1, help="stride (default 1)")
    p.add_argument("--padding", type=int, default=0, help="transposed-conv: padding (default 0)")
    p.add_argument("--seed", type=int, default=0, help="conv-backprop: seed of the numeric check")


def _size(text: str, flag: str) -> tuple[int, int]:
    from torchdojo.errors import DojoError

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DojoError(f"{flag} {text!r} is not a size", f"write it as HxW, e.g. {flag} 3x3") from None
    return h, w


def main(args: argparse.Namespace) -> int:
    from torchdojo.errors import DojoError
    from torchdojo.nn.conv_explain import explain_conv_backprop, explain_transposed_conv, parse_matrix

    try:
        if args.topic == "conv-backprop":
            h, w = _size(args.input_size, "--input-size")
            kh, kw = _size(args.kernel_size, "--kernel-size")
            exp = explain_conv_backprop(h, w, kh, kw, args.stride, args.seed)
        else:
            exp = explain_transposed_conv(
                parse_matrix(args.input), parse_matrix(args.kernel), args.stride, args.padding
            )
    except ValueError as e:
        raise DojoError(str(e), "see `torchdojo explain --help` for the expected values") from None
    print(exp.text)
    return 0 if exp.ok else 1
