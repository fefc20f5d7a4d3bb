"""Typed configs: `key=value` overrides (nested, tuples, Literal choices), errors that name the key and
the allowed values, and a to_dict/from_dict round trip."""

import dataclasses
import json
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo.config import TrainConfig, apply_overrides, field_names, from_dict, to_dict
from torchdojo.errors import DojoError


@dataclasses.dataclass
class Inner:
    width: int = 8
    act: Literal["relu", "gelu"] = "relu"


@dataclasses.dataclass
class Outer:
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    tags: tuple[str, ...] = ()
    rate: float = 0.5
    flag: bool = False
    maybe: int | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def test_nested_keys_tuples_literals_and_bools():
    cfg = apply_overrides(
        Outer(),
        [
            "inner.width=32",
            "inner.act=gelu",
            "sizes=3, 4,5",
            "tags=a,b",
            "rate=1e-3",
            "flag=yes",
            "maybe=7",
            "train.optimizer=sgd",
            "train.lr=0.1",
        ],
    )
    assert cfg.inner == Inner(32, "gelu")
    assert cfg.sizes == (3, 4, 5) and cfg.tags == ("a", "b")
    assert cfg.rate == 1e-3 and cfg.flag is True and cfg.maybe == 7
    assert cfg.train.optimizer == "sgd" and cfg.train.lr == 0.1
    assert apply_overrides(cfg, ["maybe=none"]).maybe is None


def test_overrides_return_a_copy():
    cfg = Outer()
    new = apply_overrides(cfg, {"inner": {"width": 3}, "train.epochs": 2})
    assert (new.inner.width, new.train.epochs) == (3, 2)
    assert (cfg.inner.width, cfg.train.epochs) == (8, 5)


def test_field_names_are_dotted():
    names = field_names(Outer())
    assert "inner.act" in names and "train.lr" in names and "inner" not in names


@pytest.mark.parametrize(
    "item,problem,fix",
    [
        ("inner.act=tanh", "bad value 'tanh' for inner.act", "allowed values: relu, gelu"),
        (
            "train.optimizer=rmsprop",
            "bad value 'rmsprop' for train.optimizer",
            "allowed values: sgd, adam, adamw",
        ),
        ("train.schedule=linear", "bad value 'linear' for train.schedule", "none, cosine, onecycle, step"),
        ("train.epochs=three", "bad value 'three' for train.epochs", "train.epochs takes"),
        ("sizes=1,x", "bad value 'x' for sizes", "sizes takes"),
        ("flag=maybe", "bad value 'maybe' for flag", "true"),
        ("rate=fast", "bad value 'fast' for rate", "float"),
    ],
)
def test_bad_values_name_the_full_key_and_the_allowed_values(item, problem, fix):
    with pytest.raises(DojoError) as e:
        apply_overrides(Outer(), [item])
    assert e.value.problem == problem
    assert fix in e.value.fix


@pytest.mark.parametrize(
    "item,problem,fix",
    [
        ("widht=3", "unknown config key 'widht'", "known keys: name, sizes"),
        ("width=3", "unknown config key 'width'", "did you mean 'inner.width'?"),
        ("inner.widht=3", "unknown config key 'inner.widht'", "did you mean 'inner.width'?"),
        ("train.lrr=0.1", "unknown config key 'train.lrr'", "train.lr"),
        ("rate.x=1", "unknown config key 'rate.x'", "rate has no sub-fields"),
        ("inner=3", "'inner' is a group of settings", "inner.<field>"),
        ("rate", "bad --set 'rate'", "key=value"),
    ],
)
def test_bad_keys_name_the_key_and_the_known_keys(item, problem, fix):
    with pytest.raises(DojoError) as e:
        apply_overrides(Outer(), [item])
    assert e.value.problem == problem
    assert fix in e.value.fix


def test_nested_unknown_key_lists_dotted_known_keys():
    with pytest.raises(DojoError) as e:
        apply_overrides(Outer(), ["train.lrr=0.1"])
    known = e.value.fix.split("known keys: ")[1].split(", ")
    assert all(k.startswith("train.") for k in known) and "train.momentum" in known


def test_literal_is_validated_for_python_values_too():
    with pytest.raises(DojoError, match="train.optimizer"):
        apply_overrides(Outer(), {"train": {"optimizer": "lbfgs"}})


@pytest.mark.parametrize(
    "item,what",
    [
        ("train.epochs=0", "train.epochs"),
        ("train.lr=-1", "train.lr"),
        ("train.label_smoothing=1", "train.label_smoothing"),
    ],
)
def test_validation_after_parsing_has_a_fix(item, what):
    with pytest.raises(DojoError, match=what) as e:
        apply_overrides(Outer(), [item])
    assert e.value.fix


train_configs = st.builds(
    TrainConfig,
    epochs=st.integers(1, 500),
    batch_size=st.integers(1, 4096),
    optimizer=st.sampled_from(["sgd", "adam", "adamw"]),
    lr=st.floats(1e-8, 10, allow_nan=False),
    weight_decay=st.floats(0, 1),
    schedule=st.sampled_from(["none", "cosine", "onecycle", "step"]),
    label_smoothing=st.floats(0, 0.99),
    grad_clip=st.floats(0, 100),
    early_stop_patience=st.integers(0, 20),
    monitor=st.sampled_from(["val_acc", "val_loss"]),
)
outer_configs = st.builds(
    Outer,
    name=st.text(max_size=20),
    sizes=st.lists(st.integers(-9, 9), max_size=5).map(tuple),
    tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    rate=st.floats(allow_nan=False, allow_infinity=False),
    flag=st.booleans(),
    maybe=st.none() | st.integers(),
    inner=st.builds(Inner, st.integers(1, 99), st.sampled_from(["relu", "gelu"])),
    train=train_configs,
)


@settings(max_examples=60, deadline=None)
@given(outer_configs)
def test_to_dict_from_dict_round_trip_through_json(cfg):
    data = json.loads(json.dumps(to_dict(cfg)))  # what config.json holds: tuples become lists
    back = from_dict(Outer, data)
    assert back == cfg
    assert isinstance(back.sizes, tuple) and isinstance(back.train, TrainConfig)


@settings(max_examples=30, deadline=None)
@given(train_configs)
def test_every_field_can_be_set_back_from_its_string(cfg):
    """`--set key=str(value)` for every field of a TrainConfig rebuilds it exactly (the CLI round trip)."""
    items = [f"{k}={v}" for k, v in to_dict(cfg).items()]
    assert apply_overrides(TrainConfig(), items) == cfg
