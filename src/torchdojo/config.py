"""Typed configs: dataclasses, scale presets, and `key=value` overrides validated in one place."""

import dataclasses
import math
import numbers
import types
import typing
from difflib import get_close_matches
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from torchdojo.errors import DojoError

C = TypeVar("C")
SCALES = ("smoke", "small", "full")


@dataclasses.dataclass
class TrainConfig:
    """Everything the training engine needs; shared by every experiment that trains a classifier."""

    epochs: int = 5
    batch_size: int = 128
    eval_batch_size: int = 256
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: Literal["none", "cosine", "onecycle", "step"] = "none"
    warmup_epochs: float = 0.0  # linear warm-up, in epochs (fractions allowed)
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    early_stop_patience: int = 0  # epochs without val improvement; 0 = off
    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    max_batches: int = 0  # stop each epoch after this many batches (smoke tests); 0 = all
    # NHWC activations and weights: 3-4x faster conv training on CPU (oneDNN) and faster on GPU tensor cores
    channels_last: bool = True
    amp: bool = True  # bf16 autocast on CUDA; CPU always trains in fp32 (bit-reproducible)
    compile: bool = False  # torch.compile the training step (pays off on long GPU runs)
    # BN -> ReLU -> 2x2 max-pool as one op on CPU (same maths, ~2x fewer memory passes; torchdojo.fusion)
    cpu_fusion: bool = True

    def __post_init__(self) -> None:
        check_numbers(self, "train.")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            _check_range(f"train.{name}", getattr(self, name), lo=1)
        _check_range("train.lr", self.lr, lo=0, lo_open=True)
        _check_range("train.momentum", self.momentum, lo=0, hi=1, hi_open=True)
        _check_range("train.label_smoothing", self.label_smoothing, lo=0, hi=1, hi_open=True)
        if self.warmup_epochs > self.epochs:
            raise DojoError(
                f"train.warmup_epochs={self.warmup_epochs} is longer than train.epochs={self.epochs}",
                "warm up for at most the whole run, e.g. --set train.warmup_epochs=1",
            )


# The largest whole number any setting takes (counts, sizes, steps, seeds): 10**30 epochs or a 10**30 batch is
# a typo, and torch cannot even index with it.
INT_MAX = 2**31 - 1

# Ranges of fields by name, for every config (experiments' own fields included): (lo, hi, lo_open, hi_open).
# Every float must be finite and every int >= 0 besides (`check_numbers`).
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "val_fraction": (0, 1, True, True),
    "weight_decay": (0, None, False, False),
    "grad_clip": (0, None, False, False),
    "warmup_epochs": (0, None, False, False),
    "dropout": (0, 1, False, True),
    "drop": (0, 1, False, True),
    "mask": (0, 1, False, True),
    "shuffle": (0, 1, False, False),
    "target_acc": (0, 1, False, False),
    "lr": (0, None, True, False),
    "clip_lr": (0, None, True, False),
    "reset_lr": (0, None, True, False),
    "overfit_lr": (0, None, True, False),
    "margin": (0, None, True, False),
    "slope": (0, 1, True, True),
    "backbone_lr_mult": (0, None, False, False),
    "finetune_lr_scale": (0, None, True, False),
    "ce_weight": (0, None, False, False),
    "lam": (0, None, False, False),
    "clip_norm": (0, None, True, False),
    "clip_value": (0, None, True, False),
    "clip_radius": (0, None, True, False),
    # zero padding around each image before a random crop: beyond 64 px the crops of any image here are mostly
    # padding, and the padded batch grows with its square (2**31 px: an overflow, not a run)
    "crop_padding": (0, 64, False, False),
}


def _check_range(
    key: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        if hi is None:
            span = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            span = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise DojoError(f"{key} must be {span}, got {value}", f"pass a value {span}, e.g. --set {key}=...")


def _check_number(key: str, value: Any) -> None:
    """Every float finite, every int >= 0 (counts, sizes, steps, seeds), and the named ranges of RANGES."""
    if isinstance(value, (tuple, list)):
        for v in value:
            _check_number(key, v)
        return
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise DojoError(f"{key} must be a finite number, got {value}", f"pass a finite value, e.g. --set {key}=...")
    if isinstance(value, int) and value < 0:
        raise DojoError(f"{key} must be >= 0, got {value}", f"pass a non-negative value, e.g. --set {key}=0")
    if isinstance(value, int) and value > INT_MAX:
        shown = f"{value:,}" if value < 10**40 else f"a {value.bit_length():,}-bit number"
        raise DojoError(f"{key} must be <= {INT_MAX:,}, got {shown}", f"pass a smaller value, e.g. --set {key}=...")
    name = key.rsplit(".", 1)[-1]
    if name in RANGES and isinstance(value, (int, float)):
        _check_range(key, value, *RANGES[name])


def check_numbers(cfg: Any, prefix: str = "") -> None:
    """Apply `_check_number` to every field of a (nested) dataclass config; raises a DojoError naming the key."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_numbers(value, f"{prefix}{f.name}.")
        else:
            _check_number(prefix + f.name, value)


def _coerce(value: str, tp: Any, key: str) -> Any:
    """Parse the string `value` as type `tp`, or raise a DojoError naming `key`."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if str(a) == value:
                return a
        raise DojoError(f"bad value {value!r} for {key}", f"allowed values: {', '.join(map(str, allowed))}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null") and len(args) < len(get_args(tp)):
            return None
        return _coerce(value, args[0], key)
    if origin in (tuple, list):
        (inner, *_) = get_args(tp) or (str,)
        if get_origin(inner) in (tuple, list):
            raise DojoError(f"{key} cannot be set from the command line (type {tp})")
        parts = [p.strip() for p in value.split(",") if p.strip()]
        seq = [_coerce(p, inner, key) for p in parts]
        return tuple(seq) if origin is tuple else seq
    try:
        if tp is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return value
    except ValueError:
        allowed = "true or false" if tp is bool else f"a value of type {tp.__name__}"
        raise DojoError(f"bad value {_shown(value)} for {key}", f"{key} takes {allowed}") from None
    raise DojoError(f"{key} cannot be set from the command line (type {tp})")


def _shown(value: Any) -> str:
    """repr(value), shortened: an error message quotes what it refuses, not a megabyte of it."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than sys.get_int_max_str_digits() digits
        return f"a {value.bit_length():,}-bit number" if isinstance(value, int) else f"a {type(value).__name__}"
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text):,} characters)"


def _typed(value: Any, tp: Any, key: str) -> Any:
    """A setting given as a Python value (a dict override, config.json) checked against the field's type `tp`,
    as strictly as a `--set` string: a bool is no int, a float no int unless whole, a list no scalar, an
    element of a tuple has the element type. Strings are parsed by `_coerce`. Returns the value (tuples as
    tuples, ints of float fields as floats) or raises a DojoError naming `key`."""
    if isinstance(value, str):
        return _coerce(value, tp, key)
    origin = get_origin(tp)

    def bad(want: str) -> DojoError:
        return DojoError(
            f"bad value {_shown(value)} (a {type(value).__name__}) for {key}",
            f"{key} takes {want}, e.g. --set {key}=...",
        )

    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, (int, float)):  # bools included: str(True) is no choice unless it is one
            return _coerce(str(value), tp, key)  # Python values are checked against the choices too
        raise bad(f"one of {', '.join(map(str, allowed))}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return None
        first: DojoError | None = None
        for a in args:
            try:
                return _typed(value, a, key)
            except DojoError as e:
                first = first or e
        raise first or bad("a value")
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise bad(f"a list of {', '.join(getattr(a, '__name__', str(a)) for a in get_args(tp)) or 'values'}")
        inner = get_args(tp)
        if len(inner) == 2 and inner[1] is Ellipsis or origin is list:
            seq = [_typed(v, inner[0] if inner else Any, key) for v in value]
        else:
            if len(value) != len(inner):
                raise bad(f"exactly {len(inner)} values")
            seq = [_typed(v, t, key) for v, t in zip(value, inner, strict=True)]
        return tuple(seq) if origin is tuple else seq
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)):
            raise bad("a whole number")
        if isinstance(value, float):
            if not value.is_integer():  # NaN and inf included
                raise bad("a whole number")
            return int(value)
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad("a number")
        try:
            return float(value)
        except OverflowError:
            raise bad("a finite number") from None
    if tp is str:
        raise bad("a string")
    if dataclasses.is_dataclass(tp):
        raise DojoError(f"{key!r} is a group of settings", f"set one of its fields, e.g. {key}.<field>")
    return value  # a field of a type this module does not know: as given


def field_names(cfg: Any, prefix: str = "") -> list[str]:
    """All settable dotted keys of a (nested) dataclass config."""
    out = []
    for f in dataclasses.fields(cfg):
        val = getattr(cfg, f.name)
        if dataclasses.is_dataclass(val):
            out += field_names(val, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def parse_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """`["train.lr=0.1", ...]` as {"train.lr": "0.1"}; a dict is returned as it is (a later key wins)."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    if isinstance(overrides, str):
        overrides = [overrides]
    parsed: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str):
            raise DojoError(f"bad --set {_shown(item)}: not a key=value string", "e.g. --set train.lr=0.01")
        if "=" not in item:
            raise DojoError(f"bad --set {item!r}", "write it as key=value, e.g. --set train.lr=0.01")
        k, v = item.split("=", 1)
        parsed[k.strip()] = v.strip()
    return parsed


def apply_overrides(cfg: C, overrides: dict[str, Any] | list[str], prefix: str = "") -> C:
    """A copy of `cfg` with overrides applied (`["train.lr=0.1"]` strings or a dict); re-validates.

    `prefix` is the dotted path of `cfg` inside its parent config; errors name keys with it.
    """
    overrides = parse_overrides(overrides)
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    hints = get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise DojoError(f"config key {_shown(key)} is not a string", "name a setting, e.g. train.lr")
        head, _, rest = key.partition(".")
        if head not in names:
            known = field_names(cfg, prefix)
            close = (get_close_matches(prefix + key, known, n=1) if len(key) <= 200 else []) or [
                n for n in known if n.endswith("." + key.split(".")[-1])
            ]
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DojoError(f"unknown config key {_shown(prefix + key)}", f"{hint}known keys: {', '.join(known)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            current = getattr(cfg, head)
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                nested.setdefault(head, {}).update(value)
                continue
            if dataclasses.is_dataclass(current):
                raise DojoError(
                    f"{prefix + key!r} is a group of settings", f"set one of its fields, e.g. {prefix + key}.<field>"
                )
            flat[head] = _typed(value, hints[head], prefix + key)
            _check_number(prefix + key, flat[head])
    for head, sub in nested.items():
        current = getattr(cfg, head)
        if not dataclasses.is_dataclass(current):
            raise DojoError(
                f"unknown config key {prefix + head + '.' + next(iter(sub))!r}", f"{prefix + head} has no sub-fields"
            )
        flat[head] = apply_overrides(current, sub, f"{prefix}{head}.")
    try:
        return dataclasses.replace(cfg, **flat)
    except DojoError as e:  # TrainConfig's own checks say "train."; name the group this one is
        if isinstance(cfg, TrainConfig) and prefix and prefix != "train." and e.problem.startswith("train."):
            raise type(e)(prefix + e.problem[len("train.") :], e.fix) from None
        raise


def hyper_parameters(cfg: TrainConfig) -> dict[str, Any]:
    """The settings of a stage's TrainConfig that a report's hyper-parameter table shows (what it trained with)."""
    keys = ["optimizer", "lr", "weight_decay", "schedule", "epochs", "batch_size"]
    keys += [
        k
        for k, on in (
            ("momentum", cfg.optimizer == "sgd"),
            ("warmup_epochs", cfg.warmup_epochs),
            ("label_smoothing", cfg.label_smoothing),
            ("grad_clip", cfg.grad_clip),
            ("early_stop_patience", cfg.early_stop_patience),
            ("max_batches", cfg.max_batches),
        )
        if on
    ]
    return {k: getattr(cfg, k) for k in keys}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) dataclass config."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a (nested) dataclass config from `to_dict` output."""
    return _from_dict(cls, data, "")


def _from_dict(cls: type[C], data: Any, prefix: str) -> C:
    """`from_dict`, each value checked like a dict override (a config.json edited by hand, or damaged, is a
    DojoError naming the key, not a TypeError deep in a run)."""
    if not isinstance(data, dict):
        raise DojoError(f"config {prefix.rstrip('.') or 'file'} is a {type(data).__name__}, not a mapping of settings")
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        tp, val = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(tp):
            val = _from_dict(tp, val, f"{prefix}{f.name}.")
        else:
            val = _typed(val, tp, prefix + f.name)  # types only: ranges are the config's own __post_init__'s
        kwargs[f.name] = val
    return cls(**kwargs)
