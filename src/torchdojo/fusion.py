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

The network's first block, Conv2d -> BN -> ReLU -> max-pool with an input that needs no gradient, goes one
step further (`StemConvBatchNormReLUPool2d`, with the C kernels): the conv's weight gradient is computed from
the input patches' Gram matrix and the patches at the pooled maxima, so the backward never forms the
full-resolution dx nor keeps the conv's output (see `_StemConvBatchNormReLUPoolKernel`).
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


def _kernel_forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, code=None):
    """BN statistics (running-stat update), window maxima (and their positions into `code`), normalise + ReLU."""
    lib = kernels.load()
    n, c, h, w = x.shape
    mean, var = x.new_empty(c), x.new_empty(c)
    pooled = torch.empty((n, c, h // 2, w // 2), memory_format=torch.channels_last)
    code_ptr = None if code is None else _ptr(code)
    if lib.brp_stats_pool(_ptr(x), n, h, w, c, _ptr(mean), _ptr(var), _ptr(pooled), code_ptr):
        raise MemoryError("torchdojo.fusion: out of memory for per-thread BN statistics")
    count = n * h * w
    running_mean.lerp_(mean, momentum)
    running_var.lerp_(var * (count / (count - 1)), momentum)  # unbiased, as BatchNorm2d keeps it
    invstd = (var + eps).rsqrt()
    alpha = invstd if weight is None else weight.detach() * invstd
    beta = -mean * alpha if bias is None else bias.detach() - mean * alpha
    y = torch.empty_like(pooled)
    lib.brp_affine_relu(_ptr(pooled), pooled.numel() // c, c, _ptr(alpha), _ptr(beta), _ptr(y))
    ctx.shape, ctx.has_affine = x.shape, weight is not None
    return pooled, y, alpha, mean, invstd


def _kernel_grad_sums(ctx, grad, pooled, y, alpha, mean, invstd):
    """BN's weight and bias gradients, the gradient at each window's maximum (alpha * g where y > 0), and the
    per-channel a, b of the dense part of dx = a * (x - mean) + b (see _BatchNormReLUPool.backward)."""
    lib = kernels.load()
    n, c, h, w = ctx.shape
    g = grad.float().contiguous(memory_format=torch.channels_last)
    sum_g, sum_g_xhat = pooled.new_empty(c), pooled.new_empty(c)  # = dL/d(bias), dL/d(weight)
    g_max = torch.empty_like(pooled)
    if lib.brp_grad_sums(
        _ptr(g),
        _ptr(y),
        _ptr(pooled),
        n * (h // 2),
        w // 2,
        c,
        _ptr(mean),
        _ptr(invstd),
        _ptr(alpha),
        _ptr(sum_g),
        _ptr(sum_g_xhat),
        _ptr(g_max),
    ):
        raise MemoryError("torchdojo.fusion: out of memory for per-thread BN gradient sums")
    count = n * h * w
    a = -alpha * invstd * sum_g_xhat / count
    b = -alpha * sum_g / count
    return sum_g, sum_g_xhat, g_max, a, b


class _BatchNormReLUPoolKernel(torch.autograd.Function):
    """Training-mode BN -> ReLU -> max_pool2d(2) for channels_last fp32, by the C kernels (torchdojo.kernels)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):  # type: ignore[override]
        pooled, y, alpha, mean, invstd = _kernel_forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps)
        ctx.save_for_backward(x, pooled, y, alpha, mean, invstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, pooled, y, alpha, mean, invstd = ctx.saved_tensors
        sum_g, sum_g_xhat, g_max, a, b = _kernel_grad_sums(ctx, grad, pooled, y, alpha, mean, invstd)
        n, c, h, w = x.shape
        dx = torch.empty_like(x)
        kernels.load().brp_dx(_ptr(x), _ptr(g_max), n, h, w, c, _ptr(mean), _ptr(a), _ptr(b), _ptr(dx))
        if not ctx.has_affine:
            return dx, None, None, None, None, None, None
        return dx, sum_g_xhat, sum_g, None, None, None, None


class _StemConvBatchNormReLUPoolKernel(torch.autograd.Function):
    """conv2d (stride 1, input without gradient) -> training-mode BN -> ReLU -> max_pool2d(2), by the C kernels.

    The convolution runs as usual (oneDNN); the backward never forms dx or keeps the conv output. With U the
    input patches (P positions x J = Cin*KH*KW) and dx = a * (x - mean) + b + the scattered pooled gradient S,

        dL/dW = a * (W @ cov(U) * P) + b * sum(U) + S^T U        (per output channel, row of W)

    because x - mean = W (U - mean(U)); cov(U) * P is J x J, from one pass over the (small) input, and S^T U
    needs only the patches at each window's maximum. dL/d(conv bias) = sum(dx) = P*b + sum(S): zero but for
    rounding, since BN removes the mean. See bn_relu_pool.c (brp_stem_gram, brp_stem_sparse).
    """

    @staticmethod
    def forward(
        ctx,
        u,
        conv_weight,
        conv_bias,
        weight,
        bias,
        running_mean,
        running_var,
        momentum: float,  # type: ignore[override]
        eps: float,
        padding: tuple[int, int],
    ):
        x = F.conv2d(u, conv_weight, conv_bias, padding=padding).contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        code = torch.empty((n, c, h // 2, w // 2), dtype=torch.int32, memory_format=torch.channels_last)
        pooled, y, alpha, mean, invstd = _kernel_forward(
            ctx, x, weight, bias, running_mean, running_var, momentum, eps, code
        )
        ctx.save_for_backward(u, conv_weight, pooled, code, y, alpha, mean, invstd)
        ctx.padding, ctx.has_conv_bias = padding, conv_bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        u, conv_weight, pooled, code, y, alpha, mean, invstd = ctx.saved_tensors
        sum_g, sum_g_xhat, g_max, a, b = _kernel_grad_sums(ctx, grad, pooled, y, alpha, mean, invstd)
        lib = kernels.load()
        n, cin, hin, win = u.shape
        c, _, kh, kw = conv_weight.shape
        (ph, pw), j = ctx.padding, cin * kh * kw
        count = ctx.shape[0] * ctx.shape[2] * ctx.shape[3]
        shift = u[0, :, 0, 0].contiguous()  # covariance is shift-invariant; the shift keeps it precise
        up = F.pad(u, (pw, pw, ph, ph)).contiguous(memory_format=torch.channels_last)
        hp, wp = hin + 2 * ph, win + 2 * pw
        gram, sums = torch.empty((j, j), dtype=torch.float64), torch.empty(j, dtype=torch.float64)
        sparse = torch.empty((c, j))
        if lib.brp_stem_gram(
            _ptr(up), n, hp, wp, cin, kh, kw, _ptr(shift), _ptr(gram), _ptr(sums)
        ) or lib.brp_stem_sparse(_ptr(up), _ptr(g_max), _ptr(code), n, hp, wp, cin, kh, kw, c, _ptr(sparse)):
            raise MemoryError("torchdojo.fusion: out of memory for the stem's per-thread sums")
        cov = gram - torch.outer(sums, sums) / count  # P * covariance of the patches
        patch_sums = sums + count * shift.double().repeat_interleave(kh * kw)  # the unshifted sums
        w2d = conv_weight.detach().reshape(c, j).double()
        dense = a.double()[:, None] * (w2d @ cov) + b.double()[:, None] * patch_sums[None, :]
        d_weight = torch.empty_like(conv_weight).copy_((dense + sparse.double()).view(conv_weight.shape))
        d_bias = (b.double() * count + (alpha * sum_g).double()).float() if ctx.has_conv_bias else None
        bn_grads = (sum_g_xhat, sum_g) if ctx.has_affine else (None, None)
        return None, d_weight, d_bias, *bn_grads, None, None, None, None, None


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

    def _fusable(self, x: torch.Tensor, positions: int | None = None) -> bool:
        """Whether the fused op applies to `x` (or, for the stem, to its conv's input, with `positions` the
        number of conv output positions per channel)."""
        if not (x.device.type == "cpu" and x.dtype == torch.float32 and x.ndim == 4 and self.running_mean is not None):
            return False
        if positions is None:
            positions = x.numel() // max(x.shape[1], 1)
        return (
            positions > 1  # BN needs > 1 value per channel: let BatchNorm2d say so
            and (self.weight is None or bool((self.weight > 0).all()))
        )

    def _momentum(self) -> float:
        """The running-statistics momentum of this training step (counting it, as BatchNorm2d does)."""
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as BatchNorm2d does it
                momentum = 1.0 / float(self.num_batches_tracked)
        return momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fusable(x):
            return F.max_pool2d(F.relu(super().forward(x)), 2)
        if not self.training:  # a positive affine map commutes with max: pool first, normalise a quarter
            return F.batch_norm(
                F.max_pool2d(x, 2), self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            ).relu_()
        momentum = self._momentum()
        fn = _BatchNormReLUPool
        if x.is_contiguous(memory_format=torch.channels_last) and kernels.load() is not None:
            fn = _BatchNormReLUPoolKernel
        return fn.apply(x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", then ReLU and 2x2 max-pool"


class _DeferredConv2d(nn.Conv2d):
    """Stands in for a stem's Conv2d while it is fused: the same parameters (and state-dict keys, and
    `model.parameters()`), but its input passes through; the `StemConvBatchNormReLUPool2d` after it convolves."""

    @classmethod
    def sharing(cls, conv: nn.Conv2d) -> "_DeferredConv2d":
        deferred = cls.__new__(cls)
        deferred.__dict__.update(conv.__dict__)
        return deferred

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class StemConvBatchNormReLUPool2d(BatchNormReLUPool2d):
    """Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d(2) where the conv's input needs no gradient (the network's
    first layer): trained without forming the conv's output gradient (`_StemConvBatchNormReLUPoolKernel`).
    Any other input (one that needs a gradient, eval mode, no compiler) runs the conv, then the fused block."""

    conv: nn.Conv2d

    @classmethod
    def sharing_stem(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> "StemConvBatchNormReLUPool2d":
        fused = cls.sharing(bn)
        object.__setattr__(fused, "conv", conv)  # not a submodule: BN's parameters stay the only ones here
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if (
            self.training
            and not x.requires_grad
            and x.ndim == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu")
            and kernels.load() is not None
            and self._fusable(
                x,
                positions=x.shape[0]
                * (x.shape[2] + 2 * conv.padding[0] - conv.kernel_size[0] + 1)
                * (x.shape[3] + 2 * conv.padding[1] - conv.kernel_size[1] + 1),
            )
        ):
            return _StemConvBatchNormReLUPoolKernel.apply(
                x,
                conv.weight,
                conv.bias,
                self.weight,
                self.bias,
                self.running_mean,
                self.running_var,
                self._momentum(),
                self.eps,
                conv.padding,
            )
        return super().forward(conv(x))


def _is_pool2(m: nn.Module) -> bool:
    return (
        type(m) is nn.MaxPool2d
        and m.kernel_size in (2, (2, 2))
        and m.stride in (2, (2, 2))
        and m.padding in (0, (0, 0))
        and m.dilation in (1, (1, 1))
        and not m.ceil_mode
        and not m.return_indices
    )


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _is_stem_conv(m: nn.Module) -> bool:
    """A Conv2d the stem fusion handles: stride 1, no dilation or groups, numeric zero padding, small patches."""
    return (
        type(m) is nn.Conv2d
        and m.stride == (1, 1)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and m.in_channels * m.kernel_size[0] * m.kernel_size[1] <= 64
        and not _has_hooks(m)
    )


def _fusable_runs(model: nn.Module) -> list[tuple[nn.Sequential, int, bool]]:
    """(container, index of the BN, whether a stem conv precedes it) of every BatchNorm2d -> {ReLU,
    MaxPool2d(2)} in either order."""
    runs = []
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        mods = list(seq)
        i = 0
        while i + 2 < len(mods):
            bn, m1, m2 = mods[i : i + 3]
            pair = {type(m1), type(m2)}
            if (
                type(bn) is nn.BatchNorm2d
                and pair == {nn.ReLU, nn.MaxPool2d}
                and _is_pool2(m1 if type(m1) is nn.MaxPool2d else m2)
                and not any(_has_hooks(m) for m in (bn, m1, m2))
            ):
                runs.append((seq, i, i > 0 and _is_stem_conv(mods[i - 1])))
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
        for seq, i, stem in _fusable_runs(model):
            if stem:  # the conv before the BN: it runs inside the fused module (when its input needs no grad)
                i -= 1
                originals = [seq[i], seq[i + 1], seq[i + 2], seq[i + 3]]
                seq[i], seq[i + 1] = (
                    _DeferredConv2d.sharing(originals[0]),
                    StemConvBatchNormReLUPool2d.sharing_stem(originals[0], originals[1]),
                )
                seq[i + 2], seq[i + 3] = nn.Identity(), nn.Identity()
            else:
                originals = [seq[i], seq[i + 1], seq[i + 2]]
                seq[i], seq[i + 1], seq[i + 2] = (
                    BatchNormReLUPool2d.sharing(originals[0]),
                    nn.Identity(),
                    nn.Identity(),
                )
            swaps.append((seq, i, originals))
    try:
        yield len(swaps)
    finally:
        for seq, i, originals in reversed(swaps):
            training = seq[i].training
            for k, m in enumerate(originals):
                m.training = training
                seq[i + k] = m
