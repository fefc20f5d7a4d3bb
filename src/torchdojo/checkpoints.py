"""Checkpoints that rebuild their model: what the model is, what it predicts and how its inputs are prepared.

`build_model` leaves a plain dict on the model as `torchdojo_spec` ({"model": registry name, "in_shape":
[C, H, W], "num_classes": n, "options": {...}}); an experiment adds the class names and the input
normalisation with `describe(model, classes=..., mean=..., std=..., crop=...)`; the engine saves the dict
beside the weights in best.pt and last.pt. `rebuild(run_dir, stage)` reads it back with `load_checkpoint`
(weights_only=True: a checkpoint never runs code), checks it field by field, builds the registered model on
the meta device to check that its parameter shapes are the checkpoint's (a forged spec cannot make it
allocate more than the file holds), then builds it for real and loads the weights. `preprocess` turns image
files or uint8 image tensors into the model's input exactly as the run's test batches were made, and
`predict` gives class probabilities and names.
"""

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchdojo.errors import CheckpointError, DojoError
from torchdojo.runs import load_checkpoint

MAX_SIDE = 4096  # in_shape's H and W, as a checkpoint may claim them
MAX_CHANNELS = 64
MAX_CLASSES = 1_000_000
PLAIN = (bool, int, float, str, type(None))


def describe(
    model: nn.Module,
    *,
    classes: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop: int | None = None,
) -> nn.Module:
    """Add the class names and the input preprocessing (per-channel mean and std in [0, 1] units, an optional
    test-time center crop) to the spec `build_model` left on `model`; returns `model`. The checkpoints the
    engine writes then carry them, so `predict` can name classes and prepare images as the run did."""
    spec = getattr(model, "torchdojo_spec", None)
    if not isinstance(spec, dict):
        raise TypeError(f"{type(model).__name__} has no torchdojo_spec: build it with torchdojo.models.build_model")
    if classes is not None:
        spec["classes"] = [str(c) for c in classes]
    if mean is not None or std is not None or crop is not None:
        spec["preprocessing"] = {
            "mean": [float(v) for v in mean] if mean is not None else None,
            "std": [float(v) for v in std] if std is not None else None,
            "crop": int(crop) if crop else None,
        }
    return model


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A checkpoint's spec, checked: everything needed to build the model and prepare its inputs."""

    model: str
    in_shape: tuple[int, int, int]
    num_classes: int
    options: dict[str, Any]
    classes: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON (what `describe` and `build_model` wrote)."""
        out: dict[str, Any] = {
            "model": self.model,
            "in_shape": list(self.in_shape),
            "num_classes": self.num_classes,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
        }
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.mean is not None:
            out["preprocessing"] = {"mean": list(self.mean), "std": list(self.std or ()), "crop": self.crop}
        return out

    def class_name(self, i: int) -> str:
        return self.classes[i] if self.classes else f"class {i}"


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path}: its model spec {what}",
        "the file was not written by torchdojo as it is (or was edited); re-run the experiment to write it again",
    )


def _plain(v: Any) -> bool:
    return isinstance(v, PLAIN) or (isinstance(v, (list, tuple)) and all(isinstance(x, PLAIN) for x in v))


def _floats(path: Path, v: Any, n: int, name: str, positive: bool = False) -> tuple[float, ...]:
    ok = isinstance(v, (list, tuple)) and len(v) in (1, n) and all(isinstance(x, (int, float)) for x in v)
    if not ok or not all(math.isfinite(x) and (x > 0 or not positive) for x in v):
        raise _bad(path, f"has a bad preprocessing {name} {str(v)[:80]} (1 or {n} finite numbers)")
    return tuple(float(x) for x in v)


def parse_spec(raw: Any, path: Path) -> ModelSpec:
    """The checked `ModelSpec` of a checkpoint's raw spec; a CheckpointError naming the field otherwise."""
    from torchdojo.models import MODELS

    if not isinstance(raw, dict):
        raise _bad(path, "is not a dict")
    name, shape, k, options = raw.get("model"), raw.get("in_shape"), raw.get("num_classes"), raw.get("options", {})
    if not isinstance(name, str) or name not in MODELS:
        raise _bad(path, f"names model {str(name)[:80]!r}, which is not in the model registry ({', '.join(MODELS)})")
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
        and shape[0] <= MAX_CHANNELS
        and max(shape[1:]) <= MAX_SIDE
    ):
        raise _bad(path, f"has in_shape {str(shape)[:80]} (want [C, H, W], C <= {MAX_CHANNELS}, H, W <= {MAX_SIDE})")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_CLASSES:
        raise _bad(path, f"has num_classes {str(k)[:80]}")
    if not isinstance(options, dict) or not all(isinstance(o, str) and _plain(v) for o, v in options.items()):
        raise _bad(path, "has options that are not plain values (numbers, strings, lists of them)")
    classes = raw.get("classes")
    if classes is not None and (
        not isinstance(classes, (list, tuple)) or len(classes) != k or not all(isinstance(c, str) for c in classes)
    ):
        raise _bad(path, f"has classes that are not {k} strings")
    pre = raw.get("preprocessing") or {}
    if not isinstance(pre, dict):
        raise _bad(path, "has a preprocessing that is not a dict")
    mean = _floats(path, pre["mean"], shape[0], "mean") if pre.get("mean") is not None else None
    std = _floats(path, pre["std"], shape[0], "std", positive=True) if pre.get("std") is not None else None
    if (mean is None) != (std is None):
        raise _bad(path, "has a mean without a std (or a std without a mean)")
    crop = pre.get("crop")
    if crop is not None and (not isinstance(crop, int) or isinstance(crop, bool) or not 1 <= crop <= min(shape[1:])):
        raise _bad(path, f"has crop {str(crop)[:40]} (want 1..{min(shape[1:])})")
    return ModelSpec(
        name,
        (shape[0], shape[1], shape[2]),
        k,
        {o: tuple(v) if isinstance(v, list) else v for o, v in options.items()},
        tuple(classes) if classes is not None else None,
        mean,
        std,
        crop,
    )


def stages(run_dir: str | Path) -> list[str]:
    """The stages of a run that have a best.pt: in the order they trained (config.json's `stages`), then any
    other checkpoint folder by name."""
    run_dir = Path(run_dir)
    have = sorted(p.parent.name for p in (run_dir / "checkpoints").glob("*/best.pt"))
    order: list[str] = []
    cfg = run_dir / "config.json"
    if cfg.is_file():
        try:
            order = list((json.loads(cfg.read_text()).get("stages") or {}).keys())
        except (ValueError, OSError, AttributeError):
            order = []
    return [s for s in order if s in have] + [s for s in have if s not in order]


def checkpoint_path(run_dir: str | Path, stage: str | None = None) -> tuple[str, Path]:
    """(stage, its best.pt) of a run folder; `stage` None picks the last stage that trained. A DojoError
    names the stages there are when `stage` has no checkpoint (or the folder is not a run)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise DojoError(f"{run_dir} is not a run folder (no config.json)", "pass a folder printed by `torchdojo run`")
    known = stages(run_dir)
    if not known:
        seeds = sorted(p.name for p in (run_dir / "seeds").glob("*") if p.is_dir())
        fix = f"a repeated run keeps one folder per seed: pass {run_dir / 'seeds' / seeds[0]}" if seeds else ""
        raise DojoError(f"{run_dir} has no checkpoints (no checkpoints/*/best.pt)", fix or "pick a run that trained")
    if stage is None:
        stage = known[-1]
    if stage not in known:
        raise DojoError(f"{run_dir} has no checkpoint of stage {stage!r}", f"stages with one: {', '.join(known)}")
    return stage, run_dir / "checkpoints" / stage / "best.pt"


def _meta_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the spec's model, built on the meta device (no memory for the weights)."""
    with torch.device("meta"):
        model = _build(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _build(spec: ModelSpec) -> nn.Module:
    from torchdojo.models import build_model

    return build_model(spec.model, spec.in_shape, spec.num_classes, **spec.options)


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """The model of one checkpoint file, rebuilt from its spec and loaded with its weights, in eval mode."""
    path = Path(path)
    state = load_checkpoint(path, map_location="cpu")
    if state.get("spec") is None:
        raise CheckpointError(
            f"checkpoint {path} records no model spec: the run predates checkpoints that rebuild their model "
            "(or the stage's model is not built from the model registry, e.g. a pretrained backbone)",
            "re-run the experiment with this version of torchdojo to get checkpoints that rebuild their model",
        )
    spec = parse_spec(state["spec"], path)
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise _bad(path, "comes without a state dict of tensors")
    try:
        expected = _meta_shapes(spec)
    except Exception as e:  # options the model's constructor refuses (TypeError, ValueError, ...)
        raise _bad(path, f"does not build: {type(e).__name__}: {str(e)[:160]}") from None
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))[:3]
        raise _bad(path, f"does not match its weights (first differences: {diff})")
    model = _build(spec)
    model.load_state_dict(weights)
    model.torchdojo_spec = spec.to_dict()  # with the classes and preprocessing `describe` added
    return model.to(device).eval(), spec


def rebuild(run_dir: str | Path, stage: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The model of `stage` (default: the last stage that trained) of a run folder, with its best weights, in
    eval mode; its `torchdojo_spec` tells classes and preprocessing (see `preprocess`, `predict`)."""
    _, path = checkpoint_path(run_dir, stage)
    return load(path, device)[0]


def spec_of(model: nn.Module) -> ModelSpec:
    """The checked spec a model carries (a rebuilt one, or one from `build_model`)."""
    raw = getattr(model, "torchdojo_spec", None)
    if raw is None:
        raise DojoError(
            f"{type(model).__name__} carries no torchdojo_spec", "use a model from torchdojo.checkpoints.rebuild"
        )
    return parse_spec(raw, Path("<model>"))


def _gray(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> (..., 1, H, W) with PIL's "L" weights and rounding (a gray RGB image stays
    exactly the gray it was)."""
    r, g, b = (x.narrow(-3, i, 1).to(torch.int32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).to(torch.uint8)


def _channels(x: torch.Tensor, c: int, what: str) -> torch.Tensor:
    have = x.shape[-3]
    if have == c:
        return x
    if have == 3 and c == 1:
        return _gray(x)
    if have == 1:
        return x.expand(*x.shape[:-3], c, *x.shape[-2:])
    raise DojoError(f"{what} has {have} channels; the model takes {c}", f"pass images with 1 or {c} channels")


def _fit(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Resize (bilinear, antialiased) so the image covers h x w keeping its aspect, then center-crop h x w; an
    image already h x w is returned as it is."""
    h0, w0 = x.shape[-2:]
    if (h0, w0) == (h, w):
        return x
    scale = max(h / h0, w / w0)
    nh, nw = max(h, round(h0 * scale)), max(w, round(w0 * scale))
    batch = x.float() if x.dim() == 4 else x.float().unsqueeze(0)
    batch = torch.nn.functional.interpolate(batch, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - h) // 2, (nw - w) // 2
    batch = batch[..., top : top + h, left : left + w]
    return batch if x.dim() == 4 else batch[0]


def _pixels(spec: ModelSpec, images: Any) -> torch.Tensor:
    """The images as a (N, C, H, W) batch of 0..255 values at the model's size and channels."""
    c, h, w = spec.in_shape
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise DojoError(
                f"images are a {images.dtype} tensor; preprocess takes uint8 pixels (0..255) as datasets store them",
                "pass the raw uint8 images (ImageData.x), or give an already normalised float batch to model(x)",
            )
        if images.dim() not in (3, 4):
            raise DojoError(f"images have shape {tuple(images.shape)}", "pass (N, C, H, W) or (C, H, W) uint8 pixels")
        x = images.unsqueeze(0) if images.dim() == 3 else images
        return _fit(_channels(x, c, "the image tensor"), h, w)
    if isinstance(images, (str, Path)):
        images = [images]
    from torchdojo.backbones.images import check_image, read_image

    for item in images:  # every file's header first: a bad one is named before any is decoded
        check_image(str(item))
    return torch.stack([_fit(_channels(read_image(str(p)), c, str(p)), h, w).float() for p in images])


def preprocess(model: nn.Module | ModelSpec, images: Any) -> torch.Tensor:
    """The model's input for `images`, made as the run made its test batches: image files (or
    `skimage:NAME` samples) or uint8 tensors (N, C, H, W) / (C, H, W), converted to the model's channels
    (RGB -> gray with PIL's weights; gray -> RGB by repeating), resized to cover the model's H x W and
    center-cropped to it (nothing is done to an image already that size), the spec's test-time center crop,
    then (x - 255 mean) / (255 std) per channel."""
    spec = model if isinstance(model, ModelSpec) else spec_of(model)
    if spec.mean is None or spec.std is None:
        raise DojoError(
            f"the {spec.model} checkpoint records no input preprocessing (mean and std)",
            "normalise the images yourself and call model(x), or re-run the experiment to record it",
        )
    from torchdojo.data.augment import center_crop_resize

    x = center_crop_resize(_pixels(spec, images), spec.crop, None)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(spec.std).view(1, -1, 1, 1) * 255
    return x.float().sub(mean).div_(std)


@dataclasses.dataclass
class Prediction:
    """Class probabilities (N, K) of a batch, the most likely class of each image and its name."""

    probs: torch.Tensor
    classes: tuple[str, ...]

    @property
    def labels(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def names(self) -> list[str]:
        return [self.classes[i] for i in self.labels.tolist()]

    def top(self, k: int = 3) -> list[list[tuple[int, str, float]]]:
        """Per image, its k most likely classes as (index, name, probability), most likely first."""
        p, idx = self.probs.topk(min(k, self.probs.shape[1]), dim=1)
        return [
            [(i, self.classes[i], pi) for pi, i in zip(ps, ix, strict=True)]
            for ps, ix in zip(p.tolist(), idx.tolist(), strict=True)
        ]


def predict(model: nn.Module, images: Any, batch_size: int = 256) -> Prediction:
    """Class probabilities of `images` (see `preprocess` for what they may be) under `model` in eval mode
    (its mode is restored afterwards), in batches of `batch_size`."""
    spec = spec_of(model)
    x = preprocess(spec, images)
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            chunks = [x[i : i + batch_size].to(dev) for i in range(0, len(x), batch_size)]
            probs = torch.cat([model(c).float().softmax(1).cpu() for c in chunks])
    finally:
        model.train(was)
    return Prediction(probs, tuple(spec.class_name(i) for i in range(spec.num_classes)))
