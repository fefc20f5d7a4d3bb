"""Counting rules: multiply-accumulates (MACs) and floating-point operations (FLOPs) of one canonical op.

The conventions (CONVENTIONS below) are printed under every table, so each number says what it counts.
"""

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from torchdojo.calc.ops import Op

CONVENTIONS = (
    "MACs = multiply-accumulates, FLOPs = floating-point operations, both for the whole batch given. "
    "conv, linear and matmul: FLOPs = 2 x MACs; MACs = output elements x (input channels / groups) x kernel "
    "elements (ConvTranspose: input elements x output channels/groups x kernel elements, since every input "
    "element is multiplied by the whole kernel); the bias add is not counted (as torch.utils.flop_counter "
    "and torchvision's GFLOPS, which are MACs). "
    "BatchNorm (inference, folded to scale and shift): 1 MAC and 2 FLOPs per element. "
    "LayerNorm/GroupNorm/InstanceNorm: 1 MAC and 5 FLOPs per element (statistics, normalise, affine). "
    "Activations: 1 FLOP per element, 0 MACs; softmax: 3 FLOPs per element (exp, sum, divide). Attention: "
    "MACs = q/k/v and output projections + 2 x queries x keys x width (scores and weighted sum), FLOPs = "
    "2 x MACs + 3 per score (softmax). "
    "Max/avg pooling: 1 FLOP (compare or add) per window element per output element, 0 MACs; adaptive and "
    "global pooling and mean/sum: 1 FLOP per input element. Tensor add/sub/mul/div (residual add, "
    "squeeze-excitation scale): 1 FLOP per output element. Upsampling: 0 (nearest) or 2^d FLOPs per output "
    "element. RNN cells: MACs = batch x gates x hidden x (input + hidden), FLOPs = 2 x MACs + 4 x batch x "
    "gates x hidden (two bias adds, the sum, the activation), with gates 4 (LSTM), 3 (GRU), 1 (RNN); "
    "nn.RNN/LSTM/GRU: the same for every layer, direction and time step (layer l > 0 reads the previous "
    "layer's outputs), and these recurrent matmuls are part of the conv/linear/matmul total. "
    "Flatten, reshape, dropout and stochastic depth "
    "(eval), concat: 0. Ops without a rule (e.g. wrapped custom functions) run under "
    "torch.utils.flop_counter.FlopCounterMode, which counts the convs and matmuls inside them (MACs = FLOPs/2) "
    "and nothing else; they are listed under the table. "
    "Activation memory = bytes of each layer's output tensor (0 when it is a view or in-place on its input). "
    "Receptive field per spatial dim: size in input pixels (not clipped at the borders), jump = input pixels "
    "between adjacent output units, start = centre of the first output unit's field in input pixel "
    "coordinates (pixel centres 0..W-1); 'all' = every input pixel; branches take the union (the maximum) "
    "over paths. Spatial axes are followed through permutes, views that keep or split them, channel "
    "shuffles and NHWC layers (Linear/LayerNorm over the channel axis); an op that mixes along a spatial "
    "axis (flatten then Linear, global pooling, attention, softmax over it) makes the field 'all'. Two "
    "fields: strict = every dependency (a squeeze-excitation gate pooled over the whole image and "
    "broadcast back makes it 'all'; so do normalisation statistics over spatial axes, e.g. GroupNorm); "
    "conv path = the same without inputs broadcast over the image, the figure papers quote. jump and start "
    "are the conv path's. The model is measured in eval mode unless --train-mode is given."
)


@dataclasses.dataclass
class Cost:
    """MACs and FLOPs of one op for the whole batch; `counted` is False when no rule knows the op."""

    macs: int = 0
    flops: int = 0
    counted: bool = True


def _first(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    return tensors[0] if tensors else None


def _weight(module: nn.Module | None, args: tuple, kwargs: dict) -> torch.Tensor:
    if module is not None:
        return module.weight
    return args[1] if len(args) > 1 else kwargs["weight"]


def cost(
    op: Op,
    module: nn.Module | None,
    ins: list[torch.Tensor],
    out: torch.Tensor | None,
    args: tuple,
    kwargs: dict[str, Any],
) -> Cost:
    """The MACs and FLOPs of `op` given its tensor inputs `ins` and (first) output `out`."""
    x = _first(ins)
    n_out = out.numel() if out is not None else 0
    key = op.key
    if key == "conv":
        w = _weight(module, args, kwargs)
        k = math.prod(op.attrs["kernel"])
        if op.attrs["transposed"]:  # weight (Cin, Cout/groups, k...): each input element x the kernel
            macs = x.numel() * w.shape[1] * k
        else:  # weight (Cout, Cin/groups, k...): each output element sums Cin/groups x k products
            macs = n_out * w.shape[1] * k
        return Cost(macs, 2 * macs)
    if key in ("linear", "matmul"):
        macs = n_out * (x.shape[-1] if x.dim() else 1)
        return Cost(macs, 2 * macs)
    if key in ("mha", "sdpa"):
        return _attention_cost(module, ins)
    if key == "bn":
        return Cost(x.numel(), 2 * x.numel())
    if key == "norm":
        return Cost(x.numel(), 5 * x.numel())
    if key == "act":
        return Cost(0, n_out)
    if key == "softmax":
        return Cost(0, 3 * n_out)
    if key == "pool":
        return Cost(0, n_out * math.prod(op.attrs["kernel"]))
    if key in ("adaptive_pool", "reduce"):
        return Cost(0, x.numel() if x is not None else 0)
    if key == "eltwise":
        return Cost(0, n_out)
    if key == "upsample":
        d = max(out.dim() - 2, 1) if out is not None else 1
        return Cost(0, 0 if op.attrs.get("mode", "nearest") == "nearest" else 2**d * n_out)
    if key in ("rnncell", "rnn"):
        return _rnn_cost(module, x, op.attrs["gates"])
    if key in ("free", "embed"):
        return Cost()
    if key == "opaque":  # measured by FlopCounterMode while the op ran: its conv/matmul FLOPs only
        return Cost(op.attrs["flops"] // 2, op.attrs["flops"])
    return Cost(counted=False)


def _rnn_cost(m: nn.Module, x: torch.Tensor, gates: int) -> Cost:
    h = m.hidden_size
    if isinstance(m, nn.modules.rnn.RNNCellBase):
        b = x.shape[0] if x.dim() == 2 else 1
        macs = b * gates * h * (m.input_size + h)
        return Cost(macs, 2 * macs + 4 * b * gates * h)
    # nn.RNN/LSTM/GRU: (T, B, I) or (B, T, I) or unbatched (T, I); every layer and direction runs T steps.
    steps = x.shape[:-1].numel()
    dirs = 2 if m.bidirectional else 1
    hout = m.proj_size if getattr(m, "proj_size", 0) else h
    macs = 0
    for layer in range(m.num_layers):
        i = m.input_size if layer == 0 else hout * dirs
        macs += dirs * steps * gates * h * (i + hout)
        if hout != h:  # LSTM proj_size: h_t = W_hr (o_t * tanh(c_t)) every step
            macs += dirs * steps * hout * h
    return Cost(macs, 2 * macs + 4 * steps * gates * h * m.num_layers * dirs)


def _attention_cost(m: nn.MultiheadAttention | None, ins: list[torch.Tensor]) -> Cost:
    """Scaled dot-product attention: scores q k^T and the weighted sum of v; nn.MultiheadAttention adds
    the q/k/v input projections and the output projection."""
    q, k, v = (ins + ins[-1:] * 3)[:3]
    if m is None:  # F.scaled_dot_product_attention(q, k, v): (..., L, D), (..., S, D), (..., S, Dv)
        rows, s = q.shape[:-1].numel(), k.shape[-2]
        macs = rows * s * (q.shape[-1] + v.shape[-1])
        return Cost(macs, 2 * macs + 3 * rows * s)
    e = m.embed_dim
    tokens_q, tokens_k, tokens_v = q.shape[:-1].numel(), k.shape[:-1].numel(), v.shape[:-1].numel()
    seq_k = k.shape[1] if (m.batch_first and k.dim() == 3) else k.shape[0]
    proj = tokens_q * e * e + tokens_k * m.kdim * e + tokens_v * m.vdim * e + tokens_q * e * e
    attn = 2 * tokens_q * seq_k * e  # every head: L x S scores of width E/heads, then the weighted sum
    return Cost(proj + attn, 2 * (proj + attn) + 3 * tokens_q * seq_k * m.num_heads)
