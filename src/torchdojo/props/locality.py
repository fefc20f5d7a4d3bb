"""Locality and weight sharing, counted and measured."""

import torch
from torch import nn


def connectivity(in_shape: tuple[int, int, int], out_channels: int, kernel: int) -> list[dict[str, object]]:
    """Parameters of three layers that all map a (C, H, W) input to an (out_channels, H, W) map (stride 1,
    same padding): a convolution (local, shared), a locally connected layer (local, one kernel per output
    position) and a dense layer (every input to every output). Counted from modules built on the meta device,
    so nothing is allocated; each row also gives the closed form it must equal."""
    c, h, w = in_shape
    k2 = kernel * kernel
    conv = nn.Conv2d(c, out_channels, kernel, padding=kernel // 2, device="meta")
    dense = nn.Linear(c * h * w, out_channels * h * w, device="meta")
    local = torch.empty(h * w, out_channels, c * k2 + 1, device="meta")  # per position: weights + bias
    rows = [
        {
            "layer": f"conv {kernel}x{kernel}",
            "local": "yes",
            "shared": "yes",
            "params": sum(p.numel() for p in conv.parameters()),
            "formula": f"N(M K^2 + 1) = {out_channels}x({c}x{k2}+1)",
            "closed_form": out_channels * (c * k2 + 1),
            "inputs_per_output": c * k2,
        },
        {
            "layer": f"locally connected {kernel}x{kernel}",
            "local": "yes",
            "shared": "no",
            "params": local.numel(),
            "formula": f"HW N(M K^2 + 1) = {h * w}x{out_channels}x({c}x{k2}+1)",
            "closed_form": h * w * out_channels * (c * k2 + 1),
            "inputs_per_output": c * k2,
        },
        {
            "layer": "dense",
            "local": "no",
            "shared": "no",
            "params": sum(p.numel() for p in dense.parameters()),
            "formula": f"(CHW)(NHW) + NHW = {c * h * w}x{out_channels * h * w}+{out_channels * h * w}",
            "closed_form": c * h * w * out_channels * h * w + out_channels * h * w,
            "inputs_per_output": c * h * w,
        },
    ]
    return rows


def measured_rf(model: nn.Module, in_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(height, width) of the input region the centre unit of `model`'s output depends on: the bounding box of
    the non-zero input gradient of that unit, in float64 with every weight positive and a positive input (so
    nothing cancels and every ReLU passes), max-pooling measured as average pooling (every input of a window
    counts, as it does for the receptive field)."""
    probe = _positive_copy(model)
    x = torch.ones(1, *in_shape, dtype=torch.float64, requires_grad=True)
    y = probe(x)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    support = x.grad[0].abs().sum(0) > 0
    rows, cols = torch.nonzero(support.any(1)).flatten(), torch.nonzero(support.any(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _positive_copy(model: nn.Module) -> nn.Module:
    import copy

    probe = copy.deepcopy(model).double().eval()
    for name, m in list(probe.named_modules()):
        if isinstance(m, nn.MaxPool2d):
            parent = probe.get_submodule(name.rpartition(".")[0]) if "." in name else probe
            setattr(parent, name.rpartition(".")[2], nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(1.0 / max(p[0].numel(), 1) if p.ndim > 1 else 0.0)
    return probe
