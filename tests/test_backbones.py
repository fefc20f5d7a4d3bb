"""The backbone zoo: EfficientNet-Lite0 on real photos, the torchvision entries' weight-loading paths on
fixture state dicts written here, checksums, the missing-weights error, downloads only when allowed,
trunk/classifier splits, and the predict/describe commands."""

from pathlib import Path

import pytest
import torch

from torchdojo.backbones import BACKBONES, OFFLINE_DEFAULT, WeightsMissingError, load_backbone
from torchdojo.backbones.images import preprocess, read_image
from torchdojo.backbones.weights import WeightSource, resolve_weights, sha256
from torchdojo.cli import main
from torchdojo.errors import ChecksumError, DojoError

TORCHVISION = ("resnet18", "mobilenet_v2")  # small enough to write as fixtures; resnet50/vgg16 share their code


@pytest.fixture
def weight_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty $TORCH_HOME, $XDG_CACHE_HOME and $TORCHDOJO_WEIGHTS: no real weights are found by accident."""
    dirs = {n: tmp_path / n for n in ("torch_home", "cache", "weights")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch_home"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["cache"]))
    monkeypatch.setenv("TORCHDOJO_WEIGHTS", str(dirs["weights"]))
    dirs["hub"] = dirs["torch_home"] / "hub" / "checkpoints"
    return dirs


def _fixture_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return BACKBONES.get(name).build().state_dict()


def _top3(name: str, photo: str) -> list[str]:
    model = load_backbone(name)
    with torch.no_grad():
        probs = model(preprocess(read_image(photo), model.spec.preprocessing)).softmax(1)[0]
    classes = model.spec.classes()
    return [classes[i] for i in probs.topk(3).indices.tolist()]


def test_efficientnet_lite0_real_photos():
    assert OFFLINE_DEFAULT == "efficientnet_lite0"
    cat = _top3("efficientnet_lite0", "skimage:chelsea")
    assert any(c in ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat") for c in cat), cat
    coffee = _top3("efficientnet_lite0", "skimage:coffee")
    assert coffee[0] in ("espresso", "cup", "coffee mug"), coffee


def test_efficientnet_lite0_weights_are_the_published_file():
    spec = BACKBONES.get("efficientnet_lite0")
    path = resolve_weights(spec.weights, spec.name)  # from the pip package, checksum verified
    assert sha256(path).startswith(spec.weights.sha256_prefix)
    net = spec.build()
    mapped = spec.map_keys(torch.load(path, weights_only=True))
    assert set(mapped) == set(net.state_dict())  # every key maps, none is left out


@pytest.mark.parametrize("name", TORCHVISION)
@pytest.mark.parametrize("where", ["explicit", "env", "user_cache", "hub"])
def test_torchvision_loading_paths(name, where, weight_env, tmp_path):
    spec = BACKBONES.get(name)
    state = _fixture_state(name, seed=3)
    target = {
        "explicit": tmp_path / "my.pth",
        "env": weight_env["weights"] / spec.weights.filename,
        "user_cache": weight_env["cache"] / "torchdojo" / "weights" / spec.weights.filename,
        "hub": weight_env["hub"] / spec.weights.filename,
    }[where]
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    model = load_backbone(name, weights_path=target if where == "explicit" else None, verify=False)
    got = {
        **{f"features.{k}": v for k, v in model.features.state_dict().items()},
        **{f"head.{k}": v for k, v in model.head.state_dict().items()},
    }
    assert sum(v.numel() for v in got.values()) == sum(v.numel() for v in state.values())
    fresh = spec.build()
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fresh.eval()(x))  # the fixture's weights, not random ones


def test_checksum_is_verified_for_found_files(weight_env):
    spec = BACKBONES.get("resnet18")
    path = weight_env["hub"] / spec.weights.filename
    path.parent.mkdir(parents=True)
    torch.save(_fixture_state("resnet18"), path)
    with pytest.raises(ChecksumError, match="SHA-256"):
        load_backbone("resnet18")
    good = WeightSource(spec.weights.filename, sha256(path)[:8], spec.weights.url)  # the file's own prefix
    assert resolve_weights(good, "resnet18") == path


def test_missing_weights_error_says_where_and_how(weight_env, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: calls.append(a))
    with pytest.raises(WeightsMissingError) as e:
        load_backbone("mobilenet_v2")
    msg = f"{e.value.problem}\n{e.value.fix}"
    assert str(weight_env["hub"] / "mobilenet_v2-b0353104.pth") in msg
    assert str(weight_env["weights"]) in msg and "--download" in msg
    assert "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" in msg
    assert calls == []  # nothing downloaded without permission
    with pytest.raises(WeightsMissingError, match="does not exist"):
        load_backbone("mobilenet_v2", weights_path=weight_env["weights"] / "nope.pth")


def test_download_only_when_allowed(weight_env, monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, **_):
        calls.append((url, hash_prefix))
        torch.save(_fixture_state("resnet18"), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = load_backbone("resnet18", download=True, verify=False)
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    assert (weight_env["hub"] / "resnet18-f37072fd.pth").is_file() and model.num_features == 512


def test_missing_weights_cli_error(weight_env, capsys):
    assert main(["predict", "skimage:chelsea", "--backbone", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pretrained weights for 'resnet18'") and "fix:" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0"])
def test_trunk_plus_classifier_is_the_whole_network(name):
    spec = BACKBONES.get(name)
    torch.manual_seed(0)
    net = spec.build().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = net(x)
        trunk, classifier = spec.split(net)
        feats = trunk(x)
        assert feats.shape == (2, spec.num_features)
        torch.testing.assert_close(classifier(feats), whole)


def test_predict_and_describe_commands(capsys):
    assert main(["predict", "skimage:chelsea", "--topk", "3"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "cat" in out and out.count("%") == 3
    assert main(["describe", "resnet18", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    for needle in ("layer4", "512x7x7", "224x224", "0.485", "11,689,512", "frozen", "trainable"):
        assert needle in out, needle
    assert "5,130" in out  # frozen resnet18 with a 10-class linear head trains 512*10 + 10 parameters
    with pytest.raises(DojoError, match="unknown sample photo"):
        read_image("skimage:nope")
