"""Photos for `predict`: read a file or a scikit-image sample (`skimage:chelsea`), preprocess it the way a
backbone's weights expect (resize shorter side, center crop, normalise) into a (1, 3, S, S) batch.
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torchdojo.backbones.zoo import Preprocessing
from torchdojo.errors import DojoError

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "cat")


def check_image(spec: str) -> None:
    """The cheap checks of `read_image` (the sample's name; a file's existence and header: empty, not an
    image, more pixels than the decompression-bomb limit), each a DojoError naming the file."""
    if spec.startswith("skimage:"):
        if spec.split(":", 1)[1] not in SAMPLES:
            names = ", ".join("skimage:" + s for s in SAMPLES)
            raise DojoError(f"unknown sample photo {spec!r}", f"use one of {names}")
        return
    if not Path(spec).is_file():
        raise DojoError(f"image {spec} not found", "pass an image file (jpg, png, ...) or skimage:chelsea")
    from torchdojo.data.imagefile import image_size

    image_size(spec)


def read_image(spec: str) -> torch.Tensor:
    """`skimage:NAME` (a scikit-image sample photo) or an image file -> uint8 RGB (3, H, W)."""
    if spec.startswith("skimage:"):
        name = spec.split(":", 1)[1]
        import skimage.data

        if name not in SAMPLES or not hasattr(skimage.data, name):
            names = ", ".join("skimage:" + s for s in SAMPLES)
            raise DojoError(f"unknown sample photo {spec!r}", f"use one of {names}")
        arr = np.asarray(getattr(skimage.data, name)())
    else:
        path = Path(spec)
        if not path.is_file():
            raise DojoError(f"image {spec} not found", "pass an image file (jpg, png, ...) or skimage:chelsea")
        from torchdojo.data.imagefile import load_rgb

        arr = np.asarray(load_rgb(path))  # a DojoError naming the file: empty, not an image, too large, damaged
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    return torch.from_numpy(np.array(arr[..., :3])).permute(2, 0, 1)  # a writable copy (PIL arrays are read-only)


def preprocess(img: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 (3, H, W) -> normalised float (1, 3, S, S): resize shorter side, center crop, (x - mean) / std."""
    x = img[None].float() / 255
    h, w = x.shape[-2:]
    scale = prep.resize / min(h, w)
    if max(h, w) * scale > 4 * max(prep.resize, prep.input_size):
        # An extreme aspect ratio (a 2x20000 strip) would resize to gigabytes: keep only the middle of the long
        # side that the center crop reaches (and a margin for the resampling filter). Photos never get here.
        keep = max(min(h, w), math.ceil((prep.input_size + 16) / scale))
        top, left = max(h - keep, 0) // 2, max(w - keep, 0) // 2
        x = x[..., top : top + keep, left : left + keep]
        h, w = x.shape[-2:]
    x = F.interpolate(
        x,
        size=(max(round(h * scale), prep.input_size), max(round(w * scale), prep.input_size)),
        mode=prep.interpolation,
        antialias=True,
        align_corners=False,
    )
    h, w = x.shape[-2:]
    top, left = (h - prep.input_size) // 2, (w - prep.input_size) // 2
    x = x[..., top : top + prep.input_size, left : left + prep.input_size]
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return (x.clamp(0, 1) - mean) / std
