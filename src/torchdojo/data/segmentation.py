"""H2's offline segmentation task: an item's foreground mask, on a cluttered canvas.

Each scene puts one grayscale image (a Fashion-MNIST item, say) at a random place on a `canvas` x `canvas`
background of smooth random clutter as bright as the items' darker parts, plus pixel noise; the target is the
item's foreground (its pixels above `threshold`). A brightness threshold cannot solve it (clutter and item
overlap in brightness); the shape and texture of the item have to be recognised. Scenes are stored as
2-channel uint8 images (scene, mask x 255), so batching, shuffling and augmentation treat image and mask
together, and `elastic` deforms both with one displacement field (the mask nearest-neighbour).
"""

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from torchdojo.data.augment import Aug
from torchdojo.data.base import ImageData
from torchdojo.data.loader import TensorBatches


def make_scenes(
    data: ImageData, canvas: int, seed: int, clutter: float = 0.5, noise: float = 0.08, threshold: float = 0.1
) -> ImageData:
    """One scene per image of `data` (1 channel, at most canvas x canvas): x = (N, 2, canvas, canvas) uint8 with
    channel 0 the scene and channel 1 the mask (0 or 255); y and classes are the images' own."""
    n, c, h, w = data.x.shape
    if c != 1:
        raise ValueError(f"scenes are made from 1-channel images, got {c} channels")
    if h > canvas or w > canvas:
        raise ValueError(f"images of {h}x{w} do not fit a {canvas}x{canvas} canvas")
    g = torch.Generator().manual_seed(seed)
    item = data.x.cpu().float() / 255
    background = sum(
        F.interpolate(torch.rand(n, 1, s, s, generator=g), size=(canvas, canvas), mode="bilinear", align_corners=False)
        for s in (4, 8)
    )
    lo, hi = background.amin((2, 3), keepdim=True), background.amax((2, 3), keepdim=True)
    background = (background - lo) / (hi - lo).clamp_min(1e-6) * clutter
    scene, mask = background.clone(), torch.zeros(n, 1, canvas, canvas)
    top = torch.randint(0, canvas - h + 1, (n,), generator=g)
    left = torch.randint(0, canvas - w + 1, (n,), generator=g)
    for i in range(n):
        t, lft = int(top[i]), int(left[i])
        m = item[i] > threshold
        window = scene[i, :, t : t + h, lft : lft + w]
        window[m] = item[i][m]
        mask[i, :, t : t + h, lft : lft + w] = m.float()
    scene = (scene + noise * torch.randn(scene.shape, generator=g)).clamp(0, 1)
    x = torch.cat([(scene * 255).round(), mask * 255], 1).to(torch.uint8)
    return ImageData(x, data.y.cpu(), data.classes)


def elastic(alpha: float, sigma: float) -> Aug:
    """Random elastic deformation (torchvision's v2.ElasticTransform) of each (scene, mask) pair: one displacement
    field per example, bilinear for the scene, nearest for the mask (a `tv_tensors.Mask`), so the mask stays 0/255
    and on the deformed item. Seeded from the batch generator, so an epoch's deformations are reproducible."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    transform = v2.ElasticTransform(alpha=alpha, sigma=sigma)

    def aug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        out = torch.empty_like(x)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-image ops this small run ~8x faster without the thread pool's overhead
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for i in range(len(x)):
                    image, mask = transform(tv_tensors.Image(x[i, :1]), tv_tensors.Mask(x[i, 1:]))
                    out[i, :1], out[i, 1:] = image, mask
        finally:
            torch.set_num_threads(threads)
        return out

    return aug


class SegBatches:
    """(scene, mask) float batches from 2-channel scenes: the scene normalised by (mean, std), the mask in {0, 1}.
    `repeats` > 1 draws every scene that many times per epoch (a few images, each seen under several random
    deformations); shuffling, augmentation seeds and DDP sharding are `TensorBatches`' (`whole`: no sharding, for
    a measurement every rank makes on all scenes)."""

    def __init__(
        self,
        scenes: ImageData,
        batch_size: int,
        mean: float,
        std: float,
        *,
        shuffle: bool = False,
        augment: Aug | None = None,
        repeats: int = 1,
        seed: int = 0,
        whole: bool = False,
    ):
        if repeats > 1:
            scenes = scenes.take(torch.arange(len(scenes), device=scenes.x.device).repeat(repeats))
        layout = {"rank": 0, "world_size": 1} if whole else {}  # whole: every scene on every rank (no DDP shard)
        self.scenes = TensorBatches(
            scenes, batch_size, (mean, 0.0), (std, 1.0), shuffle=shuffle, augment=augment, seed=seed, **layout
        )

    @property
    def num_global(self) -> int:
        return self.scenes.num_global

    def positions(self) -> torch.Tensor:
        return self.scenes.positions()

    def __len__(self) -> int:
        return len(self.scenes)

    def set_epoch(self, epoch: int) -> "SegBatches":
        self.scenes.set_epoch(epoch)
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, _ in self.scenes:
            yield x[:, :1], x[:, 1:]


def scene_stats(scenes: ImageData) -> tuple[float, float]:
    """Mean and std of the scene channel, in [0, 1] units (for normalisation)."""
    s = scenes.x[:, 0].float() / 255
    return s.mean().item(), s.std().item()


def overlay(scenes: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """RGB uint8 views of scenes (N, 1, H, W uint8) with their masks (N, 1, H, W, nonzero = foreground) in red."""
    s = scenes.float()
    m = (masks > 0).float()
    rgb = torch.cat([s * (1 - 0.45 * m) + 255 * 0.45 * m, s * (1 - 0.45 * m), s * (1 - 0.45 * m)], 1)
    return list(rgb.round().clamp(0, 255).to(torch.uint8))
