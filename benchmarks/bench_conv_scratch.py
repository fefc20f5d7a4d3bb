"""Benchmark: forward and forward+backward time of torchdojo.nn.Conv2d (from scratch, manual backward)
against torch.nn.Conv2d, on the same weights and input.

Default: input 32x32x64x64 (batch x channels x H x W), 3x3 kernel, padding 1, 32 -> 64 channels, fp32, CPU.
Target: the scratch layer within 3x of nn.Conv2d for forward+backward. Prints one JSON line per run.

usage: python benchmarks/bench_conv_scratch.py [--batch 32] [--cin 32] [--cout 64] [--size 64] [--repeats 5]
                                               [--device cpu] [--threads N]
"""

import argparse
import json

import torch

from torchdojo.experiments.conv_scratch import conv_speed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cin", type=int, default=32)
    p.add_argument("--cout", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up; the median is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = conv_speed(args.batch, args.cin, args.cout, args.size, args.repeats, args.device)
    print(
        f"input {r['input']}, 3x3 kernel, {r['channels']} channels, {r['device']}, {r['threads']} threads, "
        f"median of {args.repeats}"
    )
    print(f"  {'':<22}{'forward':>10}{'fwd+bwd':>10}")
    for name, key in (("torchdojo.nn.Conv2d", "scratch"), ("torch.nn.Conv2d", "torch")):
        print(f"  {name:<22}{r[f'{key}_forward_s']:>9.3f}s{r[f'{key}_fwd_bwd_s']:>9.3f}s")
    verdict = "within" if r["ratio_fwd_bwd"] <= 3 else "NOT within"
    print(
        f"  scratch / torch: {r['ratio_forward']:.2f}x forward, {r['ratio_fwd_bwd']:.2f}x forward+backward "
        f"({verdict} the 3x target)"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
