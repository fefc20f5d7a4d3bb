"""Seed 002's ladder inputs (`ladder --preset seed002`): 3x64x64 windows of 96 px STL-10 images, read from an
ImageFolder copy, the binary release, or, offline, a stand-in resized in memory (uint8 kept) so that the same
train random crop / test center crop applies to it.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from torchdojo.data.augment import Aug
from torchdojo.data.base import ImageData, Splits
from torchdojo.errors import DojoError


def resized(d: ImageData, side: int, chunk: int = 2048) -> ImageData:
    """`d` with every image resized to side x side (bilinear, antialiased, back to uint8); unchanged for 0."""
    if not side or tuple(d.x.shape[-2:]) == (side, side):
        return d
    parts = [
        F.interpolate(x.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for x in d.x.split(chunk)
    ]
    return ImageData(torch.cat(parts) if parts else d.x.new_zeros((0, d.x.shape[1], side, side)), d.y, d.classes)


def random_window(size: int) -> Aug:
    """A random `size` x `size` window per image, no padding (torchvision's RandomCrop(size)); a DojoError when
    the images are smaller than the window."""

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        if size > min(h, w):
            raise DojoError(
                f"a random {size}x{size} training window does not fit the {h}x{w} images",
                "lower train_crop/test_crop, or raise standin_size",
            )
        dy = torch.randint(0, h - size + 1, (b,), generator=g).to(x.device)
        dx = torch.randint(0, w - size + 1, (b,), generator=g).to(x.device)
        windows = x.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, h-size+1, w-size+1, size, size), a view
        return windows[torch.arange(b, device=x.device), :, dy, dx]

    return apply


def read_image_folder(root: Path, side: int) -> Splits:
    """A dataset in ImageFolder layout (root/train/<class>/<image>, root/test/<class>/<image>) in memory: every
    image decoded safely (`CheckedImageFolder`: bad files are left out with a warning), resized to side x side,
    kept as uint8 (N, 3, side, side). The two splits must have the same classes."""
    from torchvision.transforms import v2

    from torchdojo.data.folder import CheckedImageFolder

    tf = v2.Compose([v2.PILToTensor(), v2.Resize((side, side), antialias=True)])
    parts = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DojoError(
                f"{root} has no {split}/ folder", "lay it out as root/train/<class>/... and root/test/<class>/..."
            )
        ds = CheckedImageFolder(root / split, tf)
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        parts[split] = ImageData(torch.stack(xs), torch.tensor(ys, dtype=torch.int64), ds.classes)
    if parts["train"].classes != parts["test"].classes:
        raise DojoError(
            f"{root}: train/ has classes {parts['train'].classes}, test/ has {parts['test'].classes}",
            "give both splits the same class folders",
        )
    return Splits(root.name, parts["train"], parts["test"], str(root))
