"""Classify one traced graph node (module, function or method call) into a canonical operation.

Module and functional forms of the same operation (`nn.Conv2d` and `F.conv2d`, `nn.ReLU` and `torch.relu`)
map to the same `Op`, so the counting rules and the receptive-field rules are written once.
"""

import dataclasses
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class Op:
    """A canonical operation: `key` (conv, linear, pool, ...) and its attributes (kernel, stride, ...)."""

    key: str
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _tup(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return tuple(int(v) for _ in range(n))


ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Threshold,
    nn.LogSigmoid,
    nn.GLU,
)
ACT_FUNCS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.sigmoid,
    F.tanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.relu_,
    F.relu_,
    torch.nn.functional.logsigmoid,
}
ACT_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "exp", "neg"}
SOFTMAX = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
SOFTMAX_FUNCS = {F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax}
ELTWISE_FUNCS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
ELTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
MATMUL_FUNCS = {torch.matmul, operator.matmul, torch.mm, torch.bmm}
FREE_MODULES = (  # move or copy data only (or identity at eval); their shape effect is read from the call
    nn.ChannelShuffle,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)
FREE_NAMES = {"stochastic_depth", "chunk", "split", "roll", "pad", "channel_shuffle"}  # identity at eval, or data moves
REDUCE_METHODS = {"mean", "sum", "amax", "max"}
FREE_FUNCS = {
    torch.flatten,
    torch.reshape,
    torch.cat,
    torch.stack,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    F.dropout,
    F.dropout2d,
    operator.getitem,
    getattr,
}
POOL_FUNCS = {
    F.max_pool1d: "max",
    F.max_pool2d: "max",
    F.max_pool3d: "max",
    F.avg_pool1d: "avg",
    F.avg_pool2d: "avg",
    F.avg_pool3d: "avg",
}
ADAPTIVE_FUNCS = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
CONV_FUNCS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
CONVT_FUNCS = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}
RNN_GATES = {nn.RNNCell: 1, nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNN: 1, nn.LSTM: 4, nn.GRU: 3}


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _conv_op(
    n: int,
    weight_shape: tuple[int, ...],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    transposed: bool,
    output_padding: Any = 0,
) -> Op:
    k = tuple(int(x) for x in weight_shape[2:])
    pad = padding if isinstance(padding, str) else _tup(padding, n)
    return Op(
        "conv",
        {
            "kernel": k,
            "stride": _tup(stride, n),
            "padding": pad,
            "dilation": _tup(dilation, n),
            "groups": int(groups),
            "transposed": transposed,
            "output_padding": _tup(output_padding, n),
        },
    )


def _pool_op(kind: str, n: int, kernel: Any, stride: Any, padding: Any, dilation: Any = 1) -> Op:
    k = _tup(kernel, n)
    s = _tup(stride, n) if stride not in (None, [], ()) else k
    return Op(
        "pool",
        {"mode": kind, "kernel": k, "stride": s, "padding": _tup(padding, n), "dilation": _tup(dilation, n)},
    )


def classify_module(m: nn.Module) -> Op:
    """The canonical op of a leaf module."""
    if isinstance(m, nn.modules.conv._ConvNd):
        n = len(m.kernel_size)
        return _conv_op(
            n,
            (0, 0, *m.kernel_size),
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.transposed,
            m.output_padding,
        )
    if isinstance(m, nn.Linear):
        return Op("linear")
    if isinstance(m, nn.MultiheadAttention):
        return Op("mha")
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return Op("bn")
    if isinstance(m, nn.LayerNorm):  # statistics over the last len(normalized_shape) axes
        return Op("norm", {"stats_last": len(m.normalized_shape)})
    if isinstance(m, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):  # statistics over the spatial axes
        return Op("norm", {"stats_from": 2})
    if isinstance(m, nn.LocalResponseNorm):  # across neighbouring channels, one position at a time
        return Op("norm", {"stats_last": 0})
    if isinstance(m, SOFTMAX):
        return Op("softmax", {"dim": m.dim})
    if isinstance(m, ACTIVATIONS):
        return Op("act")
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        n = int(type(m).__name__[-2])
        return _pool_op("max", n, m.kernel_size, m.stride, m.padding, m.dilation)
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        n = int(type(m).__name__[-2])
        return _pool_op("avg", n, m.kernel_size, m.stride, m.padding)
    if isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return Op("adaptive_pool")
    if isinstance(m, nn.Upsample):
        return Op("upsample", {"mode": m.mode})
    if type(m) in RNN_GATES:
        cell = isinstance(m, nn.modules.rnn.RNNCellBase)
        return Op("rnncell" if cell else "rnn", {"gates": RNN_GATES[type(m)]})
    if isinstance(m, nn.Embedding):
        return Op("embed")
    if isinstance(m, nn.Flatten):
        return Op("free", {"fn": "flatten"})
    if isinstance(m, nn.modules.padding._ConstantPadNd):
        return Op("free", {"fn": "pad", "pad": tuple(m.padding)})
    if isinstance(m, FREE_MODULES):
        return Op("free", {"fn": "same"})
    return Op("unknown", {"what": type(m).__name__})


def classify_call(kind: str, target: Any, args: tuple, kwargs: dict) -> Op:
    """The canonical op of a call_function (`target` a callable) or call_method (`target` a name) node."""
    if kind == "call_method":
        if target in ACT_METHODS:
            return Op("act")
        if target in ELTWISE_METHODS:
            return Op("eltwise")
        if target in ("softmax", "log_softmax"):
            return Op("softmax", {"dim": _arg(args, kwargs, 1, "dim", None)})
        if target in ("matmul", "mm", "bmm"):
            return Op("matmul")
        if target in REDUCE_METHODS:
            return Op(
                "reduce",
                {"dim": _arg(args, kwargs, 1, "dim", None), "keepdim": _arg(args, kwargs, 2, "keepdim", False)},
            )
        return Op("free", {"fn": target})
    if target in CONV_FUNCS or target in CONVT_FUNCS:
        n = CONV_FUNCS.get(target) or CONVT_FUNCS[target]
        w = args[1] if len(args) > 1 else kwargs["weight"]
        if target in CONVT_FUNCS:  # (input, weight, bias, stride, padding, output_padding, groups, dilation)
            return _conv_op(
                n,
                tuple(w.shape),
                _arg(args, kwargs, 3, "stride", 1),
                _arg(args, kwargs, 4, "padding", 0),
                _arg(args, kwargs, 7, "dilation", 1),
                _arg(args, kwargs, 6, "groups", 1),
                True,
                _arg(args, kwargs, 5, "output_padding", 0),
            )
        return _conv_op(
            n,
            tuple(w.shape),
            _arg(args, kwargs, 3, "stride", 1),
            _arg(args, kwargs, 4, "padding", 0),
            _arg(args, kwargs, 5, "dilation", 1),
            _arg(args, kwargs, 6, "groups", 1),
            False,
        )
    if target is F.linear:
        return Op("linear")
    if target is F.scaled_dot_product_attention:
        return Op("sdpa")
    if target in MATMUL_FUNCS:
        return Op("matmul")
    if target in POOL_FUNCS:
        n = int(target.__name__[-2])
        mode = POOL_FUNCS[target]
        k = _arg(args, kwargs, 1, "kernel_size", 1)
        dil = _arg(args, kwargs, 4, "dilation", 1) if mode == "max" else 1
        return _pool_op(mode, n, k, _arg(args, kwargs, 2, "stride", None), _arg(args, kwargs, 3, "padding", 0), dil)
    if target in ADAPTIVE_FUNCS:
        return Op("adaptive_pool")
    if target is F.interpolate:
        return Op("upsample", {"mode": _arg(args, kwargs, 3, "mode", "nearest")})
    if target is F.batch_norm:
        return Op("bn")
    if target is F.layer_norm:
        shape = _arg(args, kwargs, 1, "normalized_shape", ())
        return Op("norm", {"stats_last": len(shape) if isinstance(shape, (list, tuple)) else 1})
    if target in (F.group_norm, F.instance_norm):
        return Op("norm", {"stats_from": 2})
    if target in SOFTMAX_FUNCS:
        return Op("softmax", {"dim": _arg(args, kwargs, 1, "dim", None)})
    if target in ACT_FUNCS:
        return Op("act")
    if target in ELTWISE_FUNCS:
        return Op("eltwise")
    if target in (torch.mean, torch.sum, torch.amax):
        return Op(
            "reduce", {"dim": _arg(args, kwargs, 1, "dim", None), "keepdim": _arg(args, kwargs, 2, "keepdim", False)}
        )
    name = getattr(target, "__name__", str(target))
    if isinstance(target, type) and issubclass(target, tuple):  # a namedtuple of outputs (GoogLeNetOutputs)
        return Op("free", {"fn": "tuple"})
    if target in FREE_FUNCS or name in FREE_NAMES:
        return Op("free", {"fn": name})
    return Op("unknown", {"what": name})
