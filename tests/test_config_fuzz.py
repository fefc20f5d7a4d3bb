"""Config fuzz (issue 16, item 6): any value for any setting of any experiment is accepted with the field's type
or refused with a DojoError; nothing else escapes. Values come as `--set key=value` strings and as Python values
(a dict), one setting at a time and several at once, top-level and in the TrainConfig groups (train., head.,
clf., head_train.). A few accepted values of representative settings then run a whole experiment at smoke scale."""

import dataclasses
import math
import tempfile
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchdojo.config import INT_MAX, from_dict, to_dict
from torchdojo.errors import DojoError
from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments.base import build_config, run_experiment


def _fields(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, annotation) of every leaf setting of a (nested) dataclass config."""
    hints = get_type_hints(type(cfg))
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += _fields(value, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, hints[f.name]))
    return out


FIELDS = [(name, key, tp) for name in EXPERIMENTS.names() for key, tp in _fields(EXPERIMENTS.get(name).Config())]
GROUPS = sorted({(name, key.split(".")[0]) for name, key, _ in FIELDS if "." in key})  # (experiment, TrainConfig group)


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _conforms(value: Any, tp: Any) -> bool:
    """Whether an accepted value really has the field's type (a bool is no int, a list no tuple, ...)."""
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in get_args(tp))
    if origin is tuple:
        (inner, *_) = get_args(tp)
        return isinstance(value, tuple) and all(_conforms(v, inner) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT_MAX
    if tp is float:
        return isinstance(value, float) and math.isfinite(value)
    return isinstance(value, tp)


def _check_accepted(cfg: Any, keys: list[tuple[str, Any]]) -> None:
    for key, tp in keys:
        value = _get(cfg, key)
        assert _conforms(value, tp), f"{key}: accepted {value!r} ({type(value).__name__}) for {tp}"
    # what a run folder stores reads back as the same config (resume)
    assert from_dict(type(cfg), to_dict(cfg)) == cfg


def _try(module: Any, overrides: Any, keys: list[tuple[str, Any]]) -> Any:
    """build_config: success (values of the right type) or a DojoError; anything else fails the test."""
    try:
        cfg = build_config(module, "smoke", overrides=overrides)
    except DojoError as e:
        assert e.problem and isinstance(e.problem, str)
        assert len(str(e)) < 30_000, "an error message quotes a value at most once"
        return None
    _check_accepted(cfg, keys)
    return cfg


# Values nobody should be able to break a config with, as Python values and (str()) as --set strings.
NASTY: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    -1,
    -1e-9,
    0,
    0.5,
    1.5,
    10**30,
    10**400,
    -(10**30),
    2**31,
    True,
    False,
    None,
    "",
    " ",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "10**30",
    "1" * 5000,
    "1e30",
    "0x10",
    "1,2",
    ",",
    "true",
    "none",
    "caf\u00e9 \u2603 \U0001f600",
    "\uff11\uff12",  # full-width digits
    "\u0661\u0662",  # Arabic-Indic digits
    "\x00",
    "x" * 10_000,
    [1, 2],
    [],
    (),
    ("a",),
    (1, 2),
    [math.nan],
    {"a": 1},
    {},
    b"1",
    object(),
    1 + 2j,
]


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_every_field_with_every_nasty_value_is_accepted_typed_or_a_dojo_error(name: str) -> None:
    """The deterministic sweep: each setting x each value above, as a Python value and as a --set string."""
    module = EXPERIMENTS.get(name)
    for exp, key, tp in FIELDS:
        if exp != name:
            continue
        for value in NASTY:
            _try(module, {key: value}, [(key, tp)])
            _try(module, [f"{key}={_as_text(value)}"], [(key, tp)])


_SCALARS = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2, max_value=2),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=40),
    st.sampled_from(["", "0", "1", "-1", "nan", "inf", "1e999", "2147483648", "true", "none", "sgd", "cosine"]),
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=4), st.lists(_SCALARS, max_size=3).map(tuple))


def _for_field(tp: Any) -> st.SearchStrategy[Any]:
    """Mostly anything; sometimes something close to right for the type (the edges of the accepted set)."""
    near: list[st.SearchStrategy[Any]] = []
    origin = get_origin(tp)
    if origin is Literal:
        near.append(st.sampled_from(get_args(tp)))
    elif origin is tuple:
        inner = get_args(tp)[0]
        near.append(st.lists(st.integers(-2, 64) if inner is int else st.text(max_size=8), max_size=4).map(tuple))
    elif tp is int:
        near.append(st.integers(-2, 2**31 + 2))
    elif tp is float:
        near.append(st.floats(-1e3, 1e3) | st.sampled_from([0.0, 1.0, 1e-300, 1e300]))
    elif tp is bool:
        near.append(st.booleans())
    return st.one_of(_VALUES, *near)


def _as_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_one_setting_as_string_or_python_value(data: st.DataObject) -> None:
    name, key, tp = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(_for_field(tp), label="value")
    module = EXPERIMENTS.get(name)
    _try(module, {key: value}, [(key, tp)])
    _try(module, [f"{key}={_as_text(value)}"], [(key, tp)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_several_settings_at_once_and_group_dicts(data: st.DataObject) -> None:
    """Cross-field checks (warmup_epochs <= epochs, dim even, ...) see values of the right type only."""
    name = data.draw(st.sampled_from(EXPERIMENTS.names()), label="experiment")
    mine = [(k, tp) for exp, k, tp in FIELDS if exp == name]
    picked = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=4, unique_by=lambda f: f[0]))
    values = {k: data.draw(_for_field(tp), label=k) for k, tp in picked}
    module = EXPERIMENTS.get(name)
    _try(module, values, picked)
    _try(module, [f"{k}={_as_text(v)}" for k, v in values.items()], picked)
    nested: dict[str, Any] = {}
    for k, v in values.items():
        head, _, rest = k.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = v
        else:
            nested[k] = v
    _try(module, nested, picked)


def test_groups_and_keys_given_as_wrong_kinds_are_dojo_errors() -> None:
    """A group given a scalar, a scalar given a dict, keys that are no strings, --set items that are no strings."""
    for name, group in GROUPS:
        module = EXPERIMENTS.get(name)
        for value in (1, "x", None, [1], math.nan):
            _try(module, {group: value}, [])
        _try(module, {group: {"nope": 1}}, [])
        _try(module, {group: {"epochs": {"a": 1}}}, [])
    module = EXPERIMENTS.get("ladder")
    for bad in ({1: 2}, {None: 1}, {("a",): 1}, [1], [None], ["seed"], ["=1"], "seed=1", [b"seed=1"]):
        _try(module, bad, [])


def test_config_json_with_wrong_types_is_a_dojo_error_on_resume() -> None:
    """from_dict (a run folder's config.json read back for --resume) checks types like an override does."""
    module = EXPERIMENTS.get("ladder")
    good = to_dict(build_config(module, "smoke"))
    for key, value in (
        ("seed", "x"),
        ("seed", True),
        ("rungs", [1]),
        ("val_fraction", None),
        ("train", 3),
        ("train", {"epochs": "many"}),
        ("train", {"epochs": 2.5}),
        ("train", {"lr": math.nan}),
    ):
        bad = {**good, key: value}
        with pytest.raises(DojoError):
            from_dict(module.Config, bad)
    with pytest.raises(DojoError):
        from_dict(module.Config, [1, 2])


# --------------------------------------------------------------- accepted values run (a few, at smoke scale)

_RUN_BASE = {"rungs": "logreg", "train_subset": 200, "train.epochs": 1, "train.max_batches": 2}

# Candidates at the edges of what representative settings may accept, most extreme first: the first one a setting
# accepts goes into one run with all the others (the largest counts, the smallest rates, the longest padding).
_RUN_EDGES: dict[str, list[Any]] = {
    "train.batch_size": [10**30, INT_MAX],
    "train.eval_batch_size": [10**30, INT_MAX],
    "train.max_batches": [INT_MAX],
    "train.lr": [1e-300],
    "train.weight_decay": [1e6],
    "train.label_smoothing": [0.999],
    "train.warmup_epochs": [1.0],
    "train.grad_clip": [1e-300],
    "train.optimizer": ["sgd"],
    "train.momentum": [0.0],
    "train.schedule": ["onecycle"],
    "train.early_stop_patience": [10**30, INT_MAX],
    "crop_padding": [10**30, INT_MAX, 10**6, 64],
    "test_crop": [10**30, INT_MAX],
    "seed": [10**30, 2**64, INT_MAX],
    "val_fraction": [0.99],
}


@pytest.mark.slow
def test_the_edges_of_accepted_values_run_at_smoke_scale() -> None:
    """Accepted is not enough: the extreme accepted values must also run (or end in a DojoError)."""
    module = EXPERIMENTS.get("ladder")
    edges: dict[str, Any] = {}
    for key, candidates in _RUN_EDGES.items():
        for value in candidates:
            try:
                build_config(module, "smoke", overrides={**_RUN_BASE, key: value})
            except DojoError:
                continue
            edges[key] = value
            break
    assert set(edges) == set(_RUN_EDGES), "each setting accepts its last candidate"
    overrides = {**_RUN_BASE, **edges}
    build_config(module, "smoke", overrides=overrides)  # all of them at once, too
    with tempfile.TemporaryDirectory() as runs:
        path = run_experiment(module, scale="smoke", overrides=overrides, device="cpu", runs_root=runs, verbose=False)
        assert (path / "summary.json").is_file()
