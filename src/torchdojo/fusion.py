"""CPU fusion the engine applies while it trains and evaluates: BatchNorm2d -> ReLU -> 2x2 max-pool as one op.

On a CPU, a small CNN's batch norm and max-pool are memory-bound: PyTorch's modules make ~12 passes over
each full-resolution activation per training step (BN statistics, normalise, pool, ReLU, and their
backwards), against a convolution that runs at the FMA peak. When BN's scale is positive (it starts at 1 and
almost always stays there), the per-channel affine map commutes with max-pooling, so the block can be computed
as

    batch statistics of x  ->  max-pool x  ->  normalise, scale, shift and ReLU the pooled quarter

and, in the backward, BN's gradient becomes `a*x + b` per channel plus the pooled gradient scattered back to
each window's maximum. That is ~5 passes instead of ~12, the same function, and the same gradients up to
float rounding (tests/test_fusion.py checks both against the modules, and `fit` with `train.cpu_fusion=false`
runs the modules as they are).

`fused_bn_relu_pool(model)` swaps each such run of modules for one `BatchNormReLUPool2d` that shares the
BN's parameters and buffers (state-dict keys and optimizer state are untouched) and puts the modules back on
exit. Runs whose modules carry hooks are left alone, so feature-map hooks see what they expect. The fused op
is used for fp32 CPU tensors and a BN with running statistics and a positive scale; anything else (CUDA,
autocast, a negative scale) runs the original sequence of ops.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from torchdojo import kernels

_K = [2, 2]  # kernel and stride of the only max-pool fused: MaxPool2d(2)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class _BatchNormReLUPoolKernel(torch.autograd.Function):
    """Training-mode BN -> ReLU -> max_pool2d(2) for channels_last fp32, by the C kernels (torchdojo.kernels)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):  # type: ignore[override]
        lib = kernels.load()
        n, c, h, w = x.shape
        mean, var = x.new_empty(c), x.new_empty(c)
        pooled = torch.empty((n, c, h // 2, w // 2), memory_format=torch.channels_last)
        if lib.brp_stats_pool(_ptr(x), n, h, w, c, _ptr(mean), _ptr(var), _ptr(pooled)):
            raise MemoryError("torchdojo.fusion: out of memory for per-thread BN statistics")
        count = n * h * w
        running_mean.lerp_(mean, momentum)
        running_var.lerp_(var * (count / (count - 1)), momentum)  # unbiased, as BatchNorm2d keeps it
        invstd = (var + eps).rsqrt()
        alpha = invstd if weight is None else weight.detach() * invstd
        beta = -mean * alpha if bias is None else bias.detach() - mean * alpha
        y = torch.empty_like(pooled)
        lib.brp_affine_relu(_ptr(pooled), pooled.numel() // c, c, _ptr(alpha), _ptr(beta), _ptr(y))
        ctx.save_for_backward(x, pooled, y, alpha, mean, invstd)
        ctx.has_affine = weight is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, pooled, y, alpha, mean, invstd = ctx.saved_tensors
        lib = kernels.load()
        n, c, h, w = x.shape
        g = grad.float().contiguous(memory_format=torch.channels_last)
        sum_g, sum_g_xhat = x.new_empty(c), x.new_empty(c)  # = dL/d(bias), dL/d(weight)
        g_max = torch.empty_like(pooled)  # alpha * g where y > 0: what each window's maximum receives
        if lib.brp_grad_sums(_ptr(g), _ptr(y), _ptr(pooled), n * (h // 2), w // 2, c, _ptr(mean), _ptr(invstd),
                             _ptr(alpha), _ptr(sum_g), _ptr(sum_g_xhat), _ptr(g_max)):
            raise MemoryError("torchdojo.fusion: out of memory for per-thread BN gradient sums")
        count = n * h * w
        a = -alpha * invstd * sum_g_xhat / count  # see _BatchNormReLUPool.backward
        b = -alpha * sum_g / count
        dx = torch.empty_like(x)
        lib.brp_dx(_ptr(x), _ptr(g_max), n, h, w, c, _ptr(mean), _ptr(a), _ptr(b), _ptr(dx))
        if not ctx.has_affine:
            return dx, None, None, None, None, None, None
        return dx, sum_g_xhat, sum_g, None, None, None, None


class _BatchNormReLUPool(torch.autograd.Function):
    """Training-mode BN (batch statistics, running-stat update) -> ReLU -> max_pool2d(2), for scale > 0."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):  # type: ignore[override]
        mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, momentum)  # biased var
        pooled, idx = torch.ops.aten.max_pool2d_with_indices(x, _K, _K)
        y = F.batch_norm(pooled, mean, var, weight, bias, False, 0.0, eps).relu_()
        ctx.save_for_backward(x, pooled, idx, y, weight, mean, var)
        ctx.eps = eps
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, pooled, idx, y, weight, mean, var = ctx.saved_tensors
        c = (1, -1, 1, 1)
        invstd = (var + ctx.eps).rsqrt()
        alpha = invstd if weight is None else weight * invstd
        g = torch.ops.aten.threshold_backward(grad, y, 0)  # the ReLU's backward, on the pooled quarter
        sum_g = g.sum((0, 2, 3))  # = dL/d(bias): only the pooled maxima receive a gradient
        sum_g_xhat = (g * ((pooled - mean.view(c)) * invstd.view(c))).sum((0, 2, 3))  # = dL/d(weight)
        n = x.numel() // x.shape[1]
        # BN backward, dL/dx = alpha * (g_full - mean(g_full) - xhat * mean(g_full * xhat)), split into the
        # scattered g (at each window's maximum) and a dense per-channel affine function of x: a*x + b.
        a = -alpha * invstd * sum_g_xhat / n
        b = -alpha * sum_g / n - a * mean
        dx = torch.ops.aten.max_pool2d_with_indices_backward(g * alpha.view(c), x, _K, _K, [0, 0], [1, 1], False, idx)
        dx.addcmul_(x, a.view(c)).add_(b.view(c))
        has_affine = weight is not None
        return (dx, sum_g_xhat if has_affine else None, sum_g if has_affine else None, None, None, None, None)


class BatchNormReLUPool2d(nn.BatchNorm2d):
    """`BatchNorm2d`, then ReLU, then `MaxPool2d(2)`, as one op on CPU (see the module docstring).

    Built by `sharing(bn)`: the same parameters and buffers as `bn`, so training it trains `bn`.
    """

    @classmethod
    def sharing(cls, bn: nn.BatchNorm2d) -> "BatchNormReLUPool2d":
        fused = cls.__new__(cls)
        fused.__dict__.update(bn.__dict__)  # the same _parameters/_buffers dicts: one set of tensors
        return fused

    def _fusable(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.ndim == 4 and self.running_mean is not None
                and x.numel() > x.shape[1]  # BN needs > 1 value per channel: let BatchNorm2d say so
                and (self.weight is None or bool((self.weight > 0).all())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fusable(x):
            return F.max_pool2d(F.relu(super().forward(x)), 2)
        if not self.training:  # a positive affine map commutes with max: pool first, normalise a quarter
            return F.batch_norm(F.max_pool2d(x, 2), self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps).relu_()
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as BatchNorm2d does it
                momentum = 1.0 / float(self.num_batches_tracked)
        fn = _BatchNormReLUPool
        if x.is_contiguous(memory_format=torch.channels_last) and kernels.load() is not None:
            fn = _BatchNormReLUPoolKernel
        return fn.apply(x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", then ReLU and 2x2 max-pool"


def _is_pool2(m: nn.Module) -> bool:
    return (type(m) is nn.MaxPool2d and m.kernel_size in (2, (2, 2)) and m.stride in (2, (2, 2))
            and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1)) and not m.ceil_mode and not m.return_indices)


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _fusable_runs(model: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """(container, index of the BN) of every BatchNorm2d -> {ReLU, MaxPool2d(2)} in either order."""
    runs = []
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        mods = list(seq)
        i = 0
        while i + 2 < len(mods):
            bn, m1, m2 = mods[i : i + 3]
            pair = {type(m1), type(m2)}
            if (type(bn) is nn.BatchNorm2d and pair == {nn.ReLU, nn.MaxPool2d}
                    and _is_pool2(m1 if type(m1) is nn.MaxPool2d else m2)
                    and not any(_has_hooks(m) for m in (bn, m1, m2))):
                runs.append((seq, i))
                i += 3
            else:
                i += 1
    return runs


@contextmanager
def fused_bn_relu_pool(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every fusable BN -> ReLU -> max-pool run of `model` is one `BatchNormReLUPool2d`.

    Yields how many runs were fused; restores the original modules on exit, with BN's train/eval mode as the
    fused module left it."""
    swaps = []
    if enabled:
        for seq, i in _fusable_runs(model):
            originals = [seq[i], seq[i + 1], seq[i + 2]]
            seq[i], seq[i + 1], seq[i + 2] = BatchNormReLUPool2d.sharing(originals[0]), nn.Identity(), nn.Identity()
            swaps.append((seq, i, originals))
    try:
        yield len(swaps)
    finally:
        for seq, i, originals in reversed(swaps):
            training = seq[i].training
            for k, m in enumerate(originals):
                m.training = training
                seq[i + k] = m
