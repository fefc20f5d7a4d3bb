"""Measure the whole-network receptive field of convnext_tiny and shufflenet_v2_x1_0 by gradient support.

Their last spatial layers see 1688 and 527 input pixels (calc's analysis), more than any practical input
on a CPU at full width. A receptive field depends only on the layer geometry (kernels, strides, padding,
depths, branches), not on the channel widths, so this builds each network with the torchvision class and
its own depths but narrow channels, feeds an input large enough for the centre unit's whole field, and
compares the span the gradient reaches on the linearised float64 copy (calc.linear) with calc's analytic
field of the full-width model. Prints one JSON line per network.

usage: python benchmarks/bench_calc_rf.py [--threads N]
"""

import argparse
import json
import time

import torch
import torchvision
from torchvision.models.convnext import CNBlockConfig

from torchdojo.calc import analyze
from torchdojo.calc.linear import expected_interval, support_intervals


def narrow(name: str) -> torch.nn.Module:
    """The network's geometry with narrow channels."""
    if name == "convnext_tiny":
        widths = (8, 16, 32, 64)
        blocks = [
            CNBlockConfig(w, widths[i + 1] if i < 3 else None, n)
            for i, (w, n) in enumerate(zip(widths, (3, 3, 9, 3), strict=True))
        ]
        return torchvision.models.ConvNeXt(blocks, stochastic_depth_prob=0.0)
    if name == "shufflenet_v2_x1_0":
        return torchvision.models.ShuffleNetV2([4, 8, 4], [8, 16, 32, 64, 64])
    raise ValueError(name)


def measure(name: str, size: int) -> dict:
    start = time.perf_counter()
    with torch.device("meta"):
        full = analyze(torchvision.models.get_model(name, weights=None), (3, 224, 224)).last_spatial
    shape = (3, size, size)
    a = analyze(narrow(name), shape)
    row = a.last_spatial
    assert [d.size for d in row.rf] == [d.size for d in full.rf], "the narrow copy changed the geometry"
    (got,) = support_intervals(a.gm, shape, [row.node])
    want = tuple(
        expected_interval(d.size, d.jump, d.start, n // 2, e)
        for d, n, e in zip(row.rf, row.out_shape[2:], shape[1:], strict=True)
    )
    return {
        "model": name,
        "layer": full.name,
        "analytic_rf": [d.size for d in full.rf],
        "input": size,
        "centre_unit": [n // 2 for n in row.out_shape[2:]],
        "measured_span": got,
        "measured_rf": [hi - lo + 1 for lo, hi in got],
        "analytic_span": want,
        "match": got == want,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name, size in (("shufflenet_v2_x1_0", 576), ("convnext_tiny", 1760)):
        print(json.dumps(measure(name, size)), flush=True)


if __name__ == "__main__":
    main()
