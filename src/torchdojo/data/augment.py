"""Batched augmentation on uint8 or float image tensors (B, C, H, W), on whatever device they live.

Every op draws independent random parameters per image from an explicit `torch.Generator`, so a run
is reproducible (and resumable) from its seed. Names are what `--set augment=crop,flip,erase` takes.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from torchdojo.errors import DojoError
from torchdojo.registry import Registry

Aug = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATIONS: Registry[Callable[..., Aug]] = Registry("augmentation")


def _rand(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    # Draw on the CPU generator, then move: the same numbers on every device (CPU/GPU parity).
    return torch.rand(n, generator=g).to(device)


@AUGMENTATIONS.register("crop")
def random_crop(padding: int = 4) -> Aug:
    """Zero-pad by `padding` on each side, then cut a random HxW window per image."""

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        xp = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        windows = xp.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W): every crop, as a view
        return windows[torch.arange(b, device=x.device), :, dy, dx]  # one gather of whole rows: ~4x faster

    return apply


@AUGMENTATIONS.register("flip")
def horizontal_flip(p: float = 0.5) -> Aug:
    """Mirror each image left-right with probability p."""

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        mask = (_rand(len(x), g, x.device) < p)[:, None, None, None]
        return torch.where(mask, x.flip(-1), x)

    return apply


@AUGMENTATIONS.register("erase")
def random_erase(p: float = 0.5, max_frac: float = 0.4) -> Aug:
    """Cutout: zero one random rectangle (side up to max_frac of the image) per image, with prob. p."""

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        eh = (_rand(b, g, dev) * max_frac * h).long().clamp(min=1)
        ew = (_rand(b, g, dev) * max_frac * w).long().clamp(min=1)
        y0 = (_rand(b, g, dev) * (h - eh + 1)).long()
        x0 = (_rand(b, g, dev) * (w - ew + 1)).long()
        on = _rand(b, g, dev) < p
        ys = torch.arange(h, device=dev)[None, :]
        xs = torch.arange(w, device=dev)[None, :]
        my = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])  # (B, H)
        mx = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])  # (B, W)
        mask = (my[:, :, None] & mx[:, None, :] & on[:, None, None])[:, None]  # (B, 1, H, W)
        return x.masked_fill(mask, 0)

    return apply


@AUGMENTATIONS.register("jitter")
def brightness_contrast(strength: float = 0.3) -> Aug:
    """Scale brightness and contrast by independent factors in [1-s, 1+s] per image."""

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = len(x)
        xf = x.float()
        bright = 1 + (2 * _rand(b, g, x.device) - 1) * strength
        contrast = 1 + (2 * _rand(b, g, x.device) - 1) * strength
        mean = xf.mean((1, 2, 3), keepdim=True)
        out = ((xf - mean) * contrast[:, None, None, None] + mean) * bright[:, None, None, None]
        return out.clamp_(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out

    return apply


def build_augment(names: Sequence[str], crop_padding: int = 4) -> Aug | None:
    """Compose the named augmentations in order; an empty list means none."""
    ops = []
    for name in names:
        if name not in AUGMENTATIONS:
            raise DojoError(f"unknown augmentation {name!r}", f"choose from {', '.join(AUGMENTATIONS.names())}")
        ops.append(AUGMENTATIONS.get(name)(crop_padding) if name == "crop" else AUGMENTATIONS.get(name)())
    return compose(ops)


def compose(ops: Sequence[Aug]) -> Aug | None:
    """The augmentations applied in order, each with the same generator; None for none."""
    if not ops:
        return None
    ops = list(ops)

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for op in ops:
            x = op(x, g)
        return x

    return apply


def center_crop_resize(x: torch.Tensor, crop: int | None, size: int | None) -> torch.Tensor:
    """Test-time view: central `crop` x `crop` window, then bilinear (antialiased) resize to `size`."""
    h, w = x.shape[-2:]
    if crop is not None and crop < min(h, w):
        top, left = (h - crop) // 2, (w - crop) // 2
        x = x[..., top : top + crop, left : left + crop]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x
