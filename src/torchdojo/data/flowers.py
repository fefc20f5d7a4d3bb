"""Oxford 102 Flowers (MISSION D5-D7) in torchvision's layout and splits, registered in `DATASETS`.

Folder `flowers-102/`: `jpg/image_00001.jpg` ..., `imagelabels.mat` (label 1..102 per image) and
`setid.mat` (image ids of the official `trnid`, `valid`, `tstid` splits: 1,020 / 1,020 / 6,149 images).
Images are decoded once into memory, shorter side resized to `IMAGE_SIZE` and center-cropped square.
`Splits.train` holds the official train split followed by the official val split (10 + 10 images per
class, in that order); `official_val_mask` recovers which is which; `Splits.test` is the official test split.
"""

from pathlib import Path

import numpy as np
import torch

from torchdojo.data.base import DatasetSpec, ImageData, Splits, verify_md5

IMAGE_SIZE = 224  # D5: the network sees 224x224
MAT_MD5 = {"imagelabels.mat": "e0620be6f572b9609742df49c70aed4d", "setid.mat": "a5357ecc9cb78c4bef273ce3793fc85c"}


def flower_classes() -> list[str]:
    """The 102 category names, in label order (torchvision's list; the .mat files carry only numbers)."""
    from torchvision.datasets import Flowers102

    return list(Flowers102.classes)


def read_jpg(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): shorter side resized to `size`, then center-cropped."""
    from PIL import Image

    from torchdojo.data.imagefile import load_rgb  # refuses empty, damaged and decompression-bomb files

    with load_rgb(path) as im:
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)))
    return arr.transpose(2, 0, 1)


def _split(folder: Path, ids: np.ndarray, labels: np.ndarray, classes: list[str], size: int) -> ImageData:
    x = np.stack([read_jpg(folder / "jpg" / f"image_{int(i):05d}.jpg", size) for i in ids])
    y = torch.from_numpy(labels[ids - 1].astype(np.int64) - 1)
    return ImageData(torch.from_numpy(x), y, classes)


def load_flowers(folder: Path, verify: bool = True, size: int = IMAGE_SIZE) -> Splits:
    """Read the official splits into memory (train = official train then official val)."""
    from scipy.io import loadmat

    if verify:
        for name, h in MAT_MD5.items():
            verify_md5(folder / name, h, f"Flowers-102 {name}")
    labels = np.asarray(loadmat(folder / "imagelabels.mat", squeeze_me=True)["labels"]).reshape(-1)
    sets = loadmat(folder / "setid.mat", squeeze_me=True)
    classes = flower_classes()
    train_ids = np.concatenate([np.atleast_1d(sets["trnid"]), np.atleast_1d(sets["valid"])])
    train = _split(folder, train_ids, labels, classes, size)
    test = _split(folder, np.atleast_1d(sets["tstid"]), labels, classes, size)
    return Splits("flowers102", train, test, str(folder))


def official_val_mask(folder: Path) -> torch.Tensor:
    """Boolean mask over `Splits.train`: True for the images of the official val split."""
    from scipy.io import loadmat

    sets = loadmat(folder / "setid.mat", squeeze_me=True)
    n_tr, n_va = np.atleast_1d(sets["trnid"]).size, np.atleast_1d(sets["valid"]).size
    return torch.cat([torch.zeros(n_tr, dtype=torch.bool), torch.ones(n_va, dtype=torch.bool)])


def download_flowers(folder: Path) -> None:
    """Fetch with torchvision's downloader (checks md5s), then move the files into `folder`."""
    import shutil

    from torchvision.datasets import Flowers102

    tmp = folder.parent / f".{folder.name}.download"
    Flowers102(str(tmp), split="train", download=True)
    folder.mkdir(parents=True, exist_ok=True)
    for f in (tmp / "flowers-102").iterdir():
        if f.name != "102flowers.tgz":
            shutil.move(str(f), folder / f.name)
    shutil.rmtree(tmp, ignore_errors=True)


SPEC = DatasetSpec(
    name="flowers102",
    folder="flowers-102",
    files=("jpg", "imagelabels.mat", "setid.mat"),
    load=load_flowers,
    how_to_get="download 102flowers.tgz, imagelabels.mat and setid.mat from www.robots.ox.ac.uk/~vgg/data/flowers/102/ "
    "and extract the tgz (it gives jpg/)",
    download=download_flowers,
    description=f"Oxford 102 Flowers: 8,189 colour photos, 102 classes, official splits (held at {IMAGE_SIZE} px)",
)
