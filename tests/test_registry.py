"""Registry: register / get / names; duplicates raise; unknown names are DojoErrors with suggestions."""

import pytest

from torchdojo.data import DATASETS
from torchdojo.errors import DojoError
from torchdojo.experiments import EXPERIMENTS
from torchdojo.models import MODELS, build_model
from torchdojo.registry import Registry


def test_register_get_names_and_decorator():
    reg: Registry[int] = Registry("widget")
    reg.register("b", 2)

    @reg.register("a")
    def f():
        return 1

    assert reg.get("b") == 2 and reg.get("a") is f
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"]
    assert "a" in reg and "z" not in reg and len(reg) == 2


def test_duplicate_name_raises_and_keeps_the_first():
    reg: Registry[int] = Registry("widget")
    reg.register("x", 1)
    with pytest.raises(ValueError, match="'x' is registered twice"):
        reg.register("x", 2)
    with pytest.raises(ValueError):
        reg.register("x")(lambda: None)
    assert reg.get("x") == 1


def test_unknown_name_suggests_the_closest_and_lists_all():
    reg: Registry[int] = Registry("widget")
    for name in ("resnet18", "mobilenet", "vgg16"):
        reg.register(name, 0)
    with pytest.raises(DojoError) as e:
        reg.get("resnet19")
    assert e.value.problem == "unknown widget 'resnet19'"
    assert "did you mean 'resnet18'?" in e.value.fix
    assert "mobilenet, resnet18, vgg16" in e.value.fix
    with pytest.raises(DojoError) as e:
        reg.get("zzzz")
    assert "did you mean" not in e.value.fix and "vgg16" in e.value.fix


@pytest.mark.parametrize("registry,kind", [(DATASETS, "dataset"), (MODELS, "model"), (EXPERIMENTS, "experiment")])
def test_the_package_registries_suggest(registry, kind):
    name = registry.names()[0]
    with pytest.raises(DojoError, match=f"unknown {kind}") as e:
        registry.get(name + "x")
    assert f"did you mean {name!r}?" in e.value.fix


def test_build_model_unknown_name():
    with pytest.raises(DojoError, match="unknown model 'cnnn'") as e:
        build_model("cnnn", (1, 8, 8), 10)
    assert "did you mean 'cnn'?" in e.value.fix
