"""Time per training step of an MLP across batch sizes and widths, on the CPU and on CUDA when present."""

import time
from collections.abc import Sequence

import torch
from torch import nn


def mlp(in_features: int, width: int, classes: int, depth: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """Flatten, `depth` x (Linear, ReLU[, Dropout]), Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(width, classes))


class ResidualMLP(nn.Module):
    """The same as `mlp(..., depth)` but every hidden layer after the first adds its input: h + relu(W h + b)."""

    def __init__(self, in_features: int, width: int, classes: int, depth: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth - 1))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def step_macs(in_features: int, width: int, classes: int, depth: int = 2) -> int:
    """Multiply-accumulates of one example's forward pass through `mlp` (backward costs about twice that)."""
    return in_features * width + (depth - 1) * width * width + width * classes


def time_steps(
    device: torch.device,
    batch_sizes: Sequence[int],
    widths: Sequence[int],
    steps: int,
    in_features: int = 784,
    classes: int = 10,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Median seconds per SGD step (forward, backward, update) for every batch size x width, after warm-up
    steps; achieved GFLOP/s counts forward + backward as 3x the forward MACs x 2 FLOPs."""
    rows = []
    for width in widths:
        torch.manual_seed(seed)
        model = mlp(in_features, width, classes).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for b in batch_sizes:
            x = torch.randn(b, in_features, device=device)
            y = torch.randint(0, classes, (b,), device=device)
            times = []
            for i in range(steps + 3):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= 3:  # the first steps allocate and warm caches
                    times.append(time.perf_counter() - t0)
            sec = sorted(times)[len(times) // 2]
            flops = 6 * step_macs(in_features, width, classes) * b
            rows.append(
                {
                    "device": device.type,
                    "width": width,
                    "batch": b,
                    "ms_per_step": 1000 * sec,
                    "us_per_example": 1e6 * sec / b,
                    "gflops": flops / sec / 1e9,
                }
            )
    return rows
