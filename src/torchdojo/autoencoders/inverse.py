"""How close each decoder layer is to the inverse of its mirror encoder layer, measured on held-out data.

For encoder layer i (h_i = pool(act(A h_{i-1} + b))) and its mirror D_i:
- relative inverse error: ||D_i(h_i) - h_{i-1}||^2 / ||h_{i-1}||^2 (0 = exact inverse on these inputs);
- the same for the pseudo-inverse decoder pinv(A) (act^{-1}(h_i) - b), the best a per-point linear inverse can do
  without using the data distribution (it projects h_{i-1} onto A's row space);
- cosine similarity of the decoder's operator B to pinv(A), as dense matrices (a conv's operator matrix is built by
  applying it to every basis vector, so the comparison is exact, not a kernel-to-kernel heuristic);
- dim(h_i) / dim(h_{i-1}): below 1 the layer has rank < dim(h_{i-1}), so no decoder can invert it exactly.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F

from torchdojo.autoencoders.mirrored import MirroredAutoencoder

MAX_DENSE = 40_000_000  # largest operator matrix (entries) we build for a pseudo-inverse: 160 MB in fp32


def relative_error(approx: torch.Tensor, target: torch.Tensor) -> float:
    """||approx - target||^2 / ||target||^2 over the whole batch."""
    return ((approx - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors viewed as flat vectors."""
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@torch.no_grad()
def encoder_matrix(model: MirroredAutoencoder, i: int) -> torch.Tensor | None:
    """A_i as a dense (dim h_i before pooling, dim h_{i-1}) matrix, or None when too large."""
    enc = model.encoders[i]
    if enc.kind == "fc":
        return enc.weight.detach().double()
    n_in, n_out = math.prod(enc.in_shape), math.prod(enc.pre_pool_shape)
    if n_in * n_out > MAX_DENSE:
        return None
    basis = torch.eye(n_in, dtype=enc.weight.dtype, device=enc.weight.device).view(n_in, *enc.in_shape)
    cols = torch.cat(
        [F.conv2d(chunk, enc.weight, None, enc.stride, enc.padding).flatten(1) for chunk in basis.split(1024)]
    )  # row j = A e_j
    return cols.t().double()


@torch.no_grad()
def decoder_matrix(model: MirroredAutoencoder, i: int) -> torch.Tensor | None:
    """B_i (the mirror's linear part) as a dense (dim h_{i-1}, dim h_i before pooling) matrix."""
    dec, w = model.mirror(i), model.decoder_weight(i).detach()
    if dec.kind == "fc":
        return w.double()
    n_in, n_out = math.prod(dec.pre_pool_shape), math.prod(dec.out_shape)
    if n_in * n_out > MAX_DENSE:
        return None
    basis = torch.eye(n_in, dtype=w.dtype, device=w.device).view(n_in, *dec.pre_pool_shape)
    cols = torch.cat(
        [
            F.conv_transpose2d(c, w, None, dec.stride, dec.padding, dec.output_padding).flatten(1)
            for c in basis.split(1024)
        ]
    )
    return cols.t().double()


def pseudo_inverse(a: torch.Tensor, ridge: float = 1e-7) -> torch.Tensor:
    """pinv(a) through the smaller Gram matrix and a Cholesky solve (an SVD of a 1568x3136 conv operator
    takes minutes on a laptop CPU; this takes a second). A tiny ridge, relative to the Gram's mean diagonal,
    keeps a rank-deficient layer (pixels a stride skips) solvable; it changes the result by O(ridge)."""
    a = a.double()
    tall = a.shape[0] >= a.shape[1]
    g = a.t() @ a if tall else a @ a.t()
    g = g + ridge * g.diagonal().mean() * torch.eye(len(g), dtype=g.dtype, device=g.device)
    chol = torch.linalg.cholesky(g)
    if tall:  # (A^T A)^{-1} A^T
        return torch.cholesky_solve(a.t(), chol)
    return torch.cholesky_solve(a, chol).t()  # A^T (A A^T)^{-1}


def _bias_vector(model: MirroredAutoencoder, i: int) -> torch.Tensor:
    enc = model.encoders[i]
    b = enc.bias.detach().double()
    return b if enc.kind == "fc" else b.repeat_interleave(math.prod(enc.pre_pool_shape[1:]))


@torch.no_grad()
def pinv_invert(
    model: MirroredAutoencoder, i: int, h_next: torch.Tensor, pinv: torch.Tensor | None = None
) -> torch.Tensor | None:
    """pinv(A_i) (act^{-1}(h_i) - b_i): the pseudo-inverse decoder; None for pooling or too-large layers."""
    enc = model.encoders[i]
    if enc.pool:
        return None
    if pinv is None:
        a = encoder_matrix(model, i)
        if a is None:
            return None
        pinv = pseudo_inverse(a)
    pre = enc.act.inverse(h_next).flatten(1).double() - _bias_vector(model, i)
    return (pre @ pinv.t()).to(h_next.dtype).view(-1, *enc.in_shape)


@torch.no_grad()
def layer_report(model: MirroredAutoencoder, x: torch.Tensor) -> list[dict[str, Any]]:
    """One row per encoder layer: shapes, rank, inverse errors (learned and pseudo-inverse), weight cosine."""
    model.eval()
    hs = model.encode_all(x)
    rows = []
    for i, enc in enumerate(model.encoders):
        a = encoder_matrix(model, i)
        row: dict[str, Any] = {
            "layer": f"E{i + 1} / D{model.depth - i}",
            "in": "x".join(map(str, enc.in_shape)),
            "out": "x".join(map(str, enc.out_shape)),
            "dim_ratio": math.prod(enc.out_shape) / math.prod(enc.in_shape),
            "rel_err": relative_error(model.invert(i, hs[i + 1]), hs[i]),
        }
        if a is not None and not enc.pool:
            pinv = pseudo_inverse(a)
            row["pinv_rel_err"] = relative_error(pinv_invert(model, i, hs[i + 1], pinv), hs[i])
            b = decoder_matrix(model, i)
            row["cos_to_pinv"] = cosine(b, pinv) if b is not None else float("nan")
        rows.append(row)
    return rows


@torch.no_grad()
def pinv_reconstruct(model: MirroredAutoencoder, x: torch.Tensor) -> torch.Tensor | None:
    """Decode the code with the pseudo-inverse of every encoder layer instead of the learned decoder."""
    z = model.encode(x)
    for i in reversed(range(model.depth)):
        z = pinv_invert(model, i, z)
        if z is None:
            return None
        if model.flat:
            z = z.flatten(1)
    return z.view(-1, *model.in_shape)
