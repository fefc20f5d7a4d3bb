"""The registered image datasets: Fashion-MNIST, MNIST, CIFAR-10, STL-10 and scikit-learn digits."""

from functools import partial
from pathlib import Path

import torch

from torchdojo.data.base import DatasetSpec, ImageData, Splits, verify_md5
from torchdojo.data.flowers import SPEC as FLOWERS102
from torchdojo.data.readers import (
    check_images,
    check_labels,
    first_existing,
    read_cifar_batches,
    read_cifar_meta,
    read_idx,
    read_stl10_images,
    read_stl10_labels,
)
from torchdojo.registry import Registry

DATASETS: Registry[DatasetSpec] = Registry("dataset")

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# md5 of each file, gzipped as published and as shipped by Debian (recompressed), and of its raw content.
FASHION_MD5 = {
    "train-images-idx3-ubyte": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "cf8536b0aa1a6ac5fa3f23001093305c",
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ),
    "train-labels-idx1-ubyte": (
        "25c81989df183df01b3e8a0aad5dffbe",
        "10bea18fdb374794d4bb42e356e600c9",
        "9018921c3c673c538a1fc5bad174d6f9",
    ),
    "t10k-images-idx3-ubyte": (
        "bef4ecab320f06d8554ea6380940ec79",
        "f78720b4224f21cce2f2ccf2d7a94c9a",
        "8181f5470baa50b63fa0f6fddb340f0a",
    ),
    "t10k-labels-idx1-ubyte": (
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0d30e22e447f3c33dab9ed536400ac01",
        "15d484375f8d13e6eb1aabb0c3f46965",
    ),
}
MNIST_MD5 = {  # the published gzip files (no published md5 of the raw files: raw MNIST is not verified)
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432",),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3",),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c",),
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Every file the reader opens, batches.meta included (the md5s of the files in the official
# cifar-10-python.tar.gz, as torchvision lists them). The files are pickles: with verification on nothing
# is unpickled before all of them match; with --no-verify they are still read by a restricted unpickler.
CIFAR10_MD5 = {
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
STL10_MD5 = {
    "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
    "train_y.bin": "5a34089d4802c674881badbb80307741",
    "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
    "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
}
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _load_idx(name: str, classes: list[str], md5s: dict[str, tuple[str, ...]], folder: Path, verify: bool) -> Splits:
    def read(stem: str) -> tuple[Path, torch.Tensor]:
        path = first_existing(folder, stem)
        # Raw (unzipped) files are verified too where their md5 is known (Fashion-MNIST's table holds it).
        if verify and (path.suffix == ".gz" or name == "fashion-mnist"):
            verify_md5(path, md5s[stem], f"{name} {stem}")
        return path, read_idx(path)

    def split(prefix: str) -> ImageData:
        images, x = read(f"{prefix}-images-idx3-ubyte")
        check_images(images, x, (28, 28))
        labels, y = read(f"{prefix}-labels-idx1-ubyte")
        return ImageData(x.unsqueeze(1), check_labels(images, labels, len(x), y, len(classes)), classes)

    return Splits(name, split("train"), split("t10k"), str(folder))


def _torchvision_download(cls_name: str, folder: Path) -> None:
    """Fetch with torchvision's own downloader (mirrors and checksums), then flatten into `folder`."""
    import shutil

    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    tmp = folder.parent / f".{folder.name}.download"
    if cls_name == "STL10":
        cls(str(tmp), split="train", download=True)
        src = tmp / "stl10_binary"
    elif cls_name == "CIFAR10":
        cls(str(tmp), train=True, download=True)
        src = tmp / "cifar-10-batches-py"
    else:
        cls(str(tmp), train=True, download=True)
        src = tmp / cls_name / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".tar.gz", ".tar")):
            shutil.move(str(f), folder / f.name)
    shutil.rmtree(tmp, ignore_errors=True)


def _load_cifar10(folder: Path, verify: bool) -> Splits:
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    if verify:  # all of them before any is read
        for n, h in CIFAR10_MD5.items():
            verify_md5(folder / n, h, f"CIFAR-10 {n}")
    classes = read_cifar_meta(folder)
    xtr, ytr = read_cifar_batches(folder, train_names, len(classes))
    xte, yte = read_cifar_batches(folder, ["test_batch"], len(classes))
    return Splits("cifar10", ImageData(xtr, ytr, classes), ImageData(xte, yte, classes), str(folder))


def _load_stl10(folder: Path, verify: bool) -> Splits:
    if verify:
        for n, h in STL10_MD5.items():
            verify_md5(folder / n, h, f"STL-10 {n}")
    classes = STL10_CLASSES
    names = folder / "class_names.txt"
    if names.exists():
        classes = [c.strip() for c in names.read_text().splitlines() if c.strip()]

    def split(p: str) -> ImageData:
        images, labels = folder / f"{p}_X.bin", folder / f"{p}_y.bin"
        x = read_stl10_images(images)
        return ImageData(x, check_labels(images, labels, len(x), read_stl10_labels(labels), len(classes)), classes)

    return Splits("stl10", split("train"), split("test"), str(folder))


def _load_digits(folder: Path, verify: bool) -> Splits:
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255); a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255 / 16)).round().astype("uint8")).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    n_test = len(y) // 5
    classes = [str(i) for i in range(10)]
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    return Splits("digits", ImageData(x[tr], y[tr], classes), ImageData(x[te], y[te], classes), "sklearn.datasets")


def _idx_files() -> tuple[str, ...]:
    return tuple(f"{f}|{f}.gz" for f in IDX_FILES)


DATASETS.register(
    "fashion-mnist",
    DatasetSpec(
        name="fashion-mnist",
        folder="fashion-mnist",
        files=_idx_files(),
        load=partial(_load_idx, "fashion-mnist", FASHION_CLASSES, FASHION_MD5),
        how_to_get="install the Debian package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist), "
        "or download the four idx .gz files from github.com/zalandoresearch/fashion-mnist",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        download=partial(_torchvision_download, "FashionMNIST"),
        description="70k 28x28 grayscale clothing images, 10 classes (Zalando)",
    ),
)
DATASETS.register(
    "mnist",
    DatasetSpec(
        name="mnist",
        folder="mnist",
        files=_idx_files(),
        load=partial(_load_idx, "mnist", [str(i) for i in range(10)], MNIST_MD5),
        how_to_get="download the four idx .gz files of MNIST (yann.lecun.com/exdb/mnist or a mirror)",
        system_dirs=("/usr/share/datasets/mnist",),
        download=partial(_torchvision_download, "MNIST"),
        description="70k 28x28 grayscale handwritten digits",
    ),
)
DATASETS.register(
    "cifar10",
    DatasetSpec(
        name="cifar10",
        folder="cifar-10-batches-py",
        files=tuple(CIFAR10_MD5),
        load=_load_cifar10,
        how_to_get="download cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html and extract it",
        download=partial(_torchvision_download, "CIFAR10"),
        description="60k 32x32 colour images, 10 classes",
    ),
)
DATASETS.register(
    "stl10",
    DatasetSpec(
        name="stl10",
        folder="stl10_binary",
        files=tuple(STL10_MD5),
        load=_load_stl10,
        how_to_get="download stl10_binary.tar.gz from cs.stanford.edu/~acoates/stl10 and extract it",
        download=partial(_torchvision_download, "STL10"),
        description="13k labelled 96x96 colour images, 10 classes",
    ),
)
DATASETS.register(
    "digits",
    DatasetSpec(
        name="digits",
        folder="digits",
        files=(),
        load=_load_digits,
        needs_files=False,
        how_to_get="install scikit-learn (pip install scikit-learn)",
        description="scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn)",
    ),
)
DATASETS.register("flowers102", FLOWERS102)
