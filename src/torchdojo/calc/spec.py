"""A small spec language for textbook networks, built into real modules with closed forms beside them.

    3x128x128 | conv 5 s2 p2 64 relu | dsconv 5 s2 p2 128 relu | flatten | fc 200 softmax

The first segment is the input shape without the batch (CxHxW, or F for a vector). Layers:
  conv K[xK2] [sS] [pP|same] [dD] [gG] [nobias] N [act]   convT K [sS] [pP] N [act]
  dsconv K [sS] [pP] N [act]   (depthwise KxK then pointwise 1x1; the activation after the pointwise)
  pool max|avg K [sS] [pP]  (maxpool K, avgpool K)   gap (global average pool + flatten)
  bn   dropout [P]   flatten   fc N [act]   relu|sigmoid|tanh|softmax|...   rnncell IN HIDDEN
  yolo v1|v2|v3 classes=C [boxes=B] [grid=S]
Every layer records closed-form formulas (params, MACs, FLOPs, output size, receptive field) that
`calc.speccheck` compares with what `calc.graph` measures on the built modules.
"""

import collections
import dataclasses
import math
import re

from torch import nn

from torchdojo.calc.formula import Formula
from torchdojo.errors import DojoError

ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "softmax": lambda: nn.Softmax(dim=1),
}
ACT_FLOPS = {"softmax": 3}  # per element; every other activation: 1 (calc.rules)
LAYER_WORDS = (
    "conv",
    "convt",
    "dsconv",
    "pool",
    "maxpool",
    "avgpool",
    "gap",
    "bn",
    "dropout",
    "flatten",
    "fc",
    "rnncell",
    "yolo",
    *ACTS,
)


@dataclasses.dataclass
class SpecLayer:
    """One spec segment: its text, built module, shapes and closed-form formulas."""

    index: int
    text: str
    name: str  # the module's name in Spec.model (graph rows of this layer start with it)
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    closed: dict[str, Formula]  # params, macs, flops, out (per dim), rf, jump ...
    rf: tuple[float, ...] | None  # closed-form field size per spatial dim (None: 'all' or no spatial input)


@dataclasses.dataclass
class Spec:
    """A parsed spec: the input shape, its layers, and the nn.Sequential built from them."""

    text: str
    input_shape: tuple[int, ...]
    layers: list[SpecLayer]
    model: nn.Sequential


# What a spec may build: the modules are real and `check_spec` runs them, so a typo like `fc 10000000` or
# `p100000` must not allocate gigabytes. Per layer: parameters (1 GiB of float32), values per example.
MAX_PARAMS = 2**28
MAX_VALUES = 2**27


def numel(shape: tuple[int, ...]) -> int:
    """Values in one example of `shape`."""
    n = 1
    for v in shape:
        n *= v
    return n


def _shape(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"[0-9]+(x[0-9]+x[0-9]+)?", text.strip()):  # F or CxHxW: what the layers handle
        raise DojoError(
            f"spec input {text.strip()!r} is not a shape (F or CxHxW)", "start the spec with e.g. 3x128x128 or 64"
        )
    shape = tuple(int(v) for v in text.strip().split("x"))
    if min(shape) < 1:
        raise DojoError(f"spec input {text.strip()!r} has a size 0", "every size is >= 1, e.g. 3x128x128")
    if numel(shape) > MAX_VALUES:
        raise DojoError(
            f"spec input {text.strip()!r} has {numel(shape):,} values per example, more than {MAX_VALUES:,}",
            "use a smaller input shape",
        )
    return shape


class _Builder:
    """Walks the segments, keeping the current shape and the closed-form field (size, jump) per dim."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.rf: list[tuple[float, float]] | None = [(1, 1)] * (len(shape) - 1) if len(shape) > 1 else None
        self.all_rf = False  # every input pixel (after flatten/gap/fc)

    def fail(self, i: int, text: str, problem: str, fix: str) -> DojoError:
        return DojoError(f"spec layer {i} '{text}': {problem}", fix)

    def budget(self, i: int, text: str, params: int, out: tuple[int, ...]) -> None:
        """Refuse a layer too large to build and run, before its modules allocate anything."""
        if params > MAX_PARAMS:
            raise self.fail(i, text, f"{params:,} parameters, more than {MAX_PARAMS:,}", "use fewer channels/units")
        if numel(out) > MAX_VALUES:
            raise self.fail(
                i,
                text,
                f"output {'x'.join(map(str, out))} has {numel(out):,} values per example, more than {MAX_VALUES:,}",
                "use fewer channels, a larger stride or less padding",
            )


def _kv(tok: str, prefix: str) -> tuple[int, ...] | None:
    m = re.fullmatch(prefix + r"([0-9]+)(?:x([0-9]+))?", tok)
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2) or m.group(1)))


def _conv_args(words: list[str], err: "callable") -> dict:
    """Parse `K[xK2] [sS] [pP|same] [dD] [gG] [nobias] N [act]`."""
    opts = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1, "bias": True, "act": None}
    nums: list[tuple[int, int]] = []
    for w in words:
        if (v := _kv(w, "s")) is not None:
            opts["stride"] = v
        elif (v := _kv(w, "p")) is not None:
            opts["padding"] = v
        elif w in ("same", "p=same"):
            opts["padding"] = "same"
        elif (v := _kv(w, "d")) is not None:
            opts["dilation"] = v
        elif re.fullmatch(r"g[0-9]+", w):
            opts["groups"] = int(w[1:])
        elif w == "nobias":
            opts["bias"] = False
        elif w in ACTS:
            opts["act"] = w
        elif (v := _kv(w, "")) is not None:
            nums.append(v)
        elif re.fullmatch(r"[spdg]?-[0-9.]+(x-?[0-9.]+)?", w):
            raise err(f"{w!r} is negative", "padding is >= 0; kernel, stride, dilation, groups and channels are >= 1")
        else:
            raise err(f"cannot read {w!r}", "options are sS, pP or same, dD, gG, nobias and an activation")
    if len(nums) != 2:
        raise err("needs a kernel size and an output channel count", "e.g. conv 5 s2 p2 64 relu")
    opts["kernel"], opts["out"] = nums[0], nums[1][0]
    if nums[1][0] != nums[1][1]:
        raise err(f"output channels {'x'.join(map(str, nums[1]))} is not one number", "e.g. conv 5 s2 p2 64 relu")
    for what, v, fix in (
        ("kernel size", opts["kernel"], "e.g. conv 3 64"),
        ("output channel count", (opts["out"],), "e.g. conv 3 64"),
        ("stride", opts["stride"], "use s1 or more (s1: no downsampling)"),
        ("dilation", opts["dilation"], "use d1 or more (d1: no dilation)"),
        ("groups", (opts["groups"],), "use g1 or more (g1: a dense conv)"),
    ):
        if min(v) < 1:
            raise err(f"{what} {'x'.join(map(str, v))} must be >= 1", fix)
    if opts["padding"] == "same":
        if opts["stride"] != (1, 1):
            raise err("'same' padding needs stride 1", "give the padding as pP")
        opts["padding"] = tuple(d * (k - 1) // 2 for k, d in zip(opts["kernel"], opts["dilation"], strict=True))
    return opts


def _dims(
    b: _Builder,
    i: int,
    text: str,
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int],
    d: tuple[int, int],
    transposed: bool = False,
) -> tuple[tuple[int, int], dict[str, Formula]]:
    """Output H, W and their formulas; checks that the (dilated) kernel fits the padded input."""
    _, h, w = b.shape
    names = ("Ho", "Wo") if (h, k[0], s[0], p[0], d[0]) != (w, k[1], s[1], p[1], d[1]) else ("Ho=Wo",)
    out, closed = [], {}
    for j, (n, kk, ss, pp, dd) in enumerate(zip((h, w), k, s, p, d, strict=True)):
        keff = dd * (kk - 1) + 1
        if not transposed and keff > n + 2 * pp:
            raise b.fail(
                i,
                text,
                f"kernel {kk}{f' (dilated to {keff})' if dd > 1 else ''} is larger than its "
                f"{h}x{w} input plus padding {pp}",
                "use a smaller kernel, more padding, or fewer downsampling layers before it",
            )
        x = "HW"[j]
        if transposed:
            f = Formula(f"({x} - 1)*S - 2*P + K", **{x: n}, S=ss, P=pp, K=kk)
        elif dd > 1:
            f = Formula(f"({x} + 2*P - D*(K - 1) - 1)//S + 1", **{x: n}, P=pp, D=dd, K=kk, S=ss)
        else:
            f = Formula(f"({x} + 2*P - K)//S + 1", **{x: n}, P=pp, K=kk, S=ss)
        if f.value <= 0:
            raise b.fail(i, text, f"output size {f.value} <= 0", "use a smaller kernel or stride")
        out.append(int(f.value))
        if j < len(names):
            closed[names[j]] = f
    return (out[0], out[1]), closed


def _field(
    b: _Builder,
    closed: dict[str, Formula],
    k: tuple[int, int],
    s: tuple[int, int],
    d: tuple[int, int],
    transposed: bool = False,
) -> None:
    """Advance the closed-form field by one conv/pool layer and record its formula."""
    if b.rf is None or b.all_rf:
        return
    new = []
    for j, ((r, jump), kk, ss, dd) in enumerate(zip(b.rf, k, s, d, strict=True)):
        if transposed:
            fr, fj = Formula("r + (ceil(K/S) - 1)*j", r=r, K=kk, S=ss, j=jump), Formula("j/S", j=jump, S=ss)
        elif dd > 1:
            fr, fj = Formula("r + D*(K - 1)*j", r=r, D=dd, K=kk, j=jump), Formula("j*S", j=jump, S=ss)
        else:
            fr, fj = Formula("r + (K - 1)*j", r=r, K=kk, j=jump), Formula("j*S", j=jump, S=ss)
        new.append((fr.value, fj.value))
        if j == 0 or new[0] != new[-1] or b.rf[0] != b.rf[-1]:
            suffix = "" if j == 0 else "_w"
            closed["rf" + suffix], closed["jump" + suffix] = fr, fj
    b.rf = new


def _sym(k: tuple[int, int]) -> tuple[str, dict[str, int]]:
    return ("K*K", {"K": k[0]}) if k[0] == k[1] else ("Kh*Kw", {"Kh": k[0], "Kw": k[1]})


def _act(closed: dict[str, Formula], act: str | None, base: Formula, n_out: Formula) -> None:
    """FLOPs = 2 x MACs (+ the activation's per-element FLOPs)."""
    if act is None:
        closed["flops"] = Formula(f"2*({base.expr})", **base.values)
    else:
        per = ACT_FLOPS.get(act, 1)
        closed["flops"] = Formula(f"2*({base.expr}) + {per}*{n_out.expr}", **{**base.values, **n_out.values})


def _layer(b: _Builder, i: int, text: str) -> tuple[str, list[nn.Module], dict[str, Formula]]:
    words = text.split()
    word, rest = words[0].lower(), words[1:]

    def err(problem: str, fix: str) -> DojoError:
        return b.fail(i, text, problem, fix)

    image = len(b.shape) == 3
    if word in ("conv", "convt", "dsconv"):
        if not image:
            raise err(f"needs a CxHxW input, got {'x'.join(map(str, b.shape))}", "convs go before flatten/fc")
        o = _conv_args(rest, err)
        m, n, k, s, p, d, g = (
            b.shape[0],
            o["out"],
            o["kernel"],
            o["stride"],
            o["padding"],
            o["dilation"],
            o["groups"],
        )
        if m % g or n % g:
            raise err(f"groups {g} must divide {m} input and {n} output channels", "pick another gG")
        (ho, wo), closed = _dims(b, i, text, k, s, p, d, transposed=word == "convt")
        bias_n = n if o["bias"] else 0
        if word == "dsconv":
            b.budget(i, text, k[0] * k[1] * m + m * n + (m + bias_n if o["bias"] else 0), (max(m, n), ho, wo))
        else:
            b.budget(i, text, k[0] * k[1] * (m // g) * n + bias_n, (n, ho, wo))
        kk, kv = _sym(k)
        mm = "M" if g == 1 else "(M//G)"
        bias = " + N" if o["bias"] else ""
        vals = {**kv, "M": m, "N": n, **({"G": g} if g > 1 else {})}
        if word == "conv":
            mods = [nn.Conv2d(m, n, k, s, p, d, g, bias=o["bias"])]
            closed["params"] = Formula(f"{kk}*{mm}*N{bias}", **vals)
            closed["macs"] = Formula(f"Ho*Wo*{kk}*{mm}*N", Ho=ho, Wo=wo, **vals)
        elif word == "convt":
            if d != (1, 1) or g != 1:
                raise err("convT in a spec takes no dilation or groups", "use a Python module with calc MODULE:ATTR")
            mods = [nn.ConvTranspose2d(m, n, k, s, p, bias=o["bias"])]
            closed["params"] = Formula(f"{kk}*M*N{bias}", **vals)
            closed["macs"] = Formula(f"H*W*{kk}*M*N", H=b.shape[1], W=b.shape[2], **vals)
        else:
            mods = [nn.Conv2d(m, m, k, s, p, d, groups=m, bias=o["bias"]), nn.Conv2d(m, n, 1, bias=o["bias"])]
            closed["params"] = Formula(f"{kk}*M{' + M' if o['bias'] else ''} + M*N{bias}", **vals)
            closed["macs"] = Formula(f"Ho*Wo*{kk}*M + Ho*Wo*M*N", Ho=ho, Wo=wo, **vals)
        mods += [ACTS[o["act"]]()] if o["act"] else []
        _act(closed, o["act"], closed["macs"], Formula("Ho*Wo*N", Ho=ho, Wo=wo, N=n))
        _field(b, closed, k, s, d, transposed=word == "convt")
        b.shape = (n, ho, wo)
        return word, mods, closed
    if word in ("pool", "maxpool", "avgpool"):
        mode = word[:3] if word != "pool" else (rest.pop(0) if rest and rest[0] in ("max", "avg") else "")
        if mode not in ("max", "avg") or not image:
            raise err("needs max|avg and a CxHxW input", "e.g. pool max 2, maxpool 3 s2 p1")
        k = _kv(rest[0], "") if rest else None
        if k is None:
            raise err("needs a window size", "e.g. maxpool 2")
        s, p = k, (0, 0)
        for w in rest[1:]:
            if (v := _kv(w, "s")) is not None:
                s = v
            elif (v := _kv(w, "p")) is not None:
                p = v
            else:
                raise err(f"cannot read {w!r}", "pool options are sS and pP (each >= 0)")
        if min(k) < 1:
            raise err(f"window {'x'.join(map(str, k))} must be >= 1", "e.g. maxpool 2")
        if min(s) < 1:
            raise err(f"stride {'x'.join(map(str, s))} must be >= 1", "e.g. maxpool 3 s2 (s1: no downsampling)")
        if any(2 * pp > kk for pp, kk in zip(p, k, strict=True)):
            raise err(
                f"padding {p[0]} is more than half the window {k[0]}",
                "pool padding is at most K/2, e.g. maxpool 3 s2 p1",
            )
        (ho, wo), closed = _dims(b, i, text, k, s, p, (1, 1))
        mods = [nn.MaxPool2d(k, s, p) if mode == "max" else nn.AvgPool2d(k, s, p)]
        kk, kv = _sym(k)
        closed["params"], closed["macs"] = Formula("0"), Formula("0")
        closed["flops"] = Formula(f"Ho*Wo*C*{kk}", Ho=ho, Wo=wo, C=b.shape[0], **kv)
        _field(b, closed, k, s, (1, 1))
        b.shape = (b.shape[0], ho, wo)
        return f"{mode}pool", mods, closed
    if word == "bn":
        c = b.shape[0]
        n = Formula("C*H*W", C=c, H=b.shape[1], W=b.shape[2]) if image else Formula("C", C=c)
        closed = {"params": Formula("2*C", C=c), "macs": n, "flops": Formula(f"2*{n.expr}", **n.values)}
        return word, [nn.BatchNorm2d(c) if image else nn.BatchNorm1d(c)], closed
    if word == "dropout":
        try:
            prob = float(rest[0]) if len(rest) == 1 else 0.5 if not rest else math.nan
        except ValueError:
            prob = math.nan
        if not 0 <= prob <= 1:
            raise err(f"needs one probability in [0, 1], got {' '.join(rest)!r}", "e.g. dropout 0.5")
        return word, [nn.Dropout(prob)], {"params": Formula("0"), "flops": Formula("0")}
    if word in ("flatten", "gap"):
        if not image and word == "gap":
            raise err("needs a CxHxW input", "gap goes after the convs")
        c = b.shape[0]
        flat = numel(b.shape) if word == "flatten" else c
        closed = {
            "params": Formula("0"),
            "out": Formula("C*H*W", C=c, H=b.shape[1], W=b.shape[2])
            if image and word == "flatten"
            else Formula("C", C=c),
        }
        mods: list[nn.Module] = [nn.Flatten()]
        if word == "gap":
            mods = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            closed["flops"] = Formula("C*H*W", C=c, H=b.shape[1], W=b.shape[2])
        b.shape, b.all_rf = (flat,), True
        return word, mods, closed
    if word == "fc":
        if image:
            raise err(
                f"needs a flat input, got {'x'.join(map(str, b.shape))}",
                "add '| flatten |' or '| gap |' before it",
            )
        nums = [w for w in rest if re.fullmatch("[0-9]+", w)]
        acts = [w for w in rest if w in ACTS]
        if len(nums) != 1 or len(acts) > 1 or len(nums) + len(acts) != len(rest) or int(nums[0]) < 1:
            raise err("needs one output size >= 1 and an optional activation", "e.g. fc 200 softmax")
        f, n = b.shape[0], int(nums[0])
        b.budget(i, text, f * n + n, (n,))
        mods = [nn.Linear(f, n)] + ([ACTS[acts[0]]()] if acts else [])
        closed = {"params": Formula("F*N + N", F=f, N=n), "macs": Formula("F*N", F=f, N=n)}
        _act(closed, acts[0] if acts else None, closed["macs"], Formula("N", N=n))
        b.shape, b.all_rf = (n,), b.rf is not None
        return word, mods, closed
    if word == "rnncell":
        if len(rest) != 2 or not all(re.fullmatch("[0-9]+", w) and int(w) >= 1 for w in rest):
            raise err("needs IN and HIDDEN sizes (each >= 1)", "e.g. rnncell 64 256")
        n_in, hid = int(rest[0]), int(rest[1])
        if b.shape != (n_in,):
            raise err(
                f"input size {n_in} does not match the incoming shape {'x'.join(map(str, b.shape))}",
                f"start the spec with {n_in} or flatten to {n_in} features",
            )
        closed = {
            "params": Formula("H*I + H*H + 2*H", H=hid, I=n_in),
            "macs": Formula("H*(I + H)", H=hid, I=n_in),
            "flops": Formula("2*H*(I + H) + 4*H", H=hid, I=n_in),
        }
        b.budget(i, text, hid * (n_in + hid) + 2 * hid, (hid,))
        b.shape = (hid,)
        return word, [nn.RNNCell(n_in, hid)], closed
    if word == "yolo":
        return _yolo(b, i, text, rest, err)
    if word in ACTS:
        n = 1
        for v in b.shape:
            n *= v
        return (
            word,
            [ACTS[word]()],
            {"params": Formula("0"), "flops": Formula(f"{ACT_FLOPS.get(word, 1)}*n", n=n)},
        )
    raise err(f"unknown layer {word!r}", f"layers: {', '.join(LAYER_WORDS)}")


def _yolo(b: _Builder, i: int, text: str, rest: list[str], err: "callable") -> tuple:
    """YOLO detection heads: v1 = FC to SxSx(5B+C); v2/v3 = 1x1 conv to A(5+C) channels per cell."""
    if not rest or rest[0] not in ("v1", "v2", "v3"):
        raise err("needs a version v1, v2 or v3", "e.g. yolo v3 classes=80")
    ver, kv = rest[0], dict(w.split("=", 1) for w in rest[1:] if "=" in w)
    if any("=" not in w for w in rest[1:]) or not set(kv) <= {"classes", "boxes", "grid"}:
        raise err("options are classes=C boxes=B grid=S", "e.g. yolo v1 classes=80 boxes=2 grid=7")

    def num(key: str, default: int) -> int:
        v = kv.get(key, str(default))
        if not re.fullmatch("[0-9]+", v) or int(v) < 1:
            raise err(f"{key}={v} is not a whole number >= 1", "e.g. yolo v1 classes=80 boxes=2 grid=7")
        return int(v)

    c = num("classes", 80)
    if ver == "v1":
        nb, s = num("boxes", 2), num("grid", 7)
        if len(b.shape) != 1:
            raise err("v1's head is fully connected: it needs a flat input", "add '| flatten |' before it")
        f = b.shape[0]
        depth = Formula("5*B + C", B=nb, C=c)
        closed = {
            "depth": depth,
            "params": Formula("F*S*S*(5*B + C) + S*S*(5*B + C)", F=f, S=s, B=nb, C=c),
            "macs": Formula("F*S*S*(5*B + C)", F=f, S=s, B=nb, C=c),
        }
        closed["flops"] = Formula("2*F*S*S*(5*B + C)", F=f, S=s, B=nb, C=c)
        b.budget(i, text, (f + 1) * s * s * depth.value, (depth.value, s, s))
        mods = [nn.Linear(f, s * s * depth.value), nn.Unflatten(1, (depth.value, s, s))]
        b.shape = (depth.value, s, s)
        return "yolo", mods, closed
    if len(b.shape) != 3:
        raise err(f"{ver}'s head is a 1x1 conv: it needs a CxHxW feature map", "put it after the convs")
    na = num("boxes", 5 if ver == "v2" else 3)
    m, h, w = b.shape
    depth = Formula("A*(5 + C)", A=na, C=c)
    closed = {
        "depth": depth,
        "params": Formula("M*A*(5 + C) + A*(5 + C)", M=m, A=na, C=c),
        "macs": Formula("H*W*M*A*(5 + C)", H=h, W=w, M=m, A=na, C=c),
        "flops": Formula("2*H*W*M*A*(5 + C)", H=h, W=w, M=m, A=na, C=c),
    }
    b.budget(i, text, (m + 1) * depth.value, (depth.value, h, w))
    _field(b, closed, (1, 1), (1, 1), (1, 1))
    b.shape = (depth.value, h, w)
    return "yolo", [nn.Conv2d(m, depth.value, 1)], closed


def parse_spec(text: str) -> Spec:
    """Build a Spec (modules and closed forms) from spec text; an inconsistent spec raises DojoError."""
    segments = [s.strip() for s in text.split("|")]
    if len(segments) < 2 or not all(segments):
        raise DojoError(
            f"spec {text!r} needs an input shape and at least one layer, separated by '|'",
            "e.g. 3x128x128 | conv 5 s2 p2 64 relu | flatten | fc 200 softmax",
        )
    shape = _shape(segments[0])
    b = _Builder(shape)
    layers, named = [], collections.OrderedDict()
    for i, seg in enumerate(segments[1:], start=1):
        in_shape = b.shape
        word, mods, closed = _layer(b, i, seg)
        name = f"l{i}_{word}"
        module = nn.Sequential(*mods)
        named[name] = module
        rf = None if b.rf is None or b.all_rf else tuple(r for r, _ in b.rf)
        layers.append(SpecLayer(i, seg, name, module, in_shape, b.shape, closed, rf))
    return Spec(text, shape, layers, nn.Sequential(named))
