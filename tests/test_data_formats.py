"""Dataset loaders on small fixtures written in the real binary formats, checksums, resolution order,
clear errors for missing data, and the split helpers."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IDX_STEMS, cifar_batch, idx_bytes, write_idx_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo.data import DATASETS, load_dataset, stratified_split, subset_classes
from torchdojo.data.catalog import FASHION_CLASSES, STL10_CLASSES
from torchdojo.data.readers import read_idx
from torchdojo.errors import ChecksumError, DataMissingError, DojoError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---- MNIST / Fashion-MNIST idx -----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_fixture_loads(tmp_path, data_env, name, gz):
    folder = tmp_path / "data_dir" / DATASETS.get(name).folder
    arrays = write_idx_dataset(folder, n_train=12, n_test=6, gz=gz)
    s = load_dataset(name, data_dir=tmp_path / "data_dir", verify=False)
    assert s.train.x.shape == (12, 1, 28, 28) and s.test.x.shape == (6, 1, 28, 28)
    assert s.train.x.dtype == torch.uint8 and s.train.y.dtype == torch.int64
    assert torch.equal(s.train.x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert s.train.y.tolist() == [i % 10 for i in range(12)]
    assert s.test.y.tolist() == [i % 10 for i in range(6)][::-1]
    assert s.classes == (FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)])
    assert Path(s.source) == folder


def test_idx_pixel_placement_and_big_endian_dims(tmp_path):
    """Row-major (y, x) pixels after a big-endian header; a non-square image catches swapped dims."""
    img = np.zeros((2, 5, 7), dtype=np.uint8)
    img[1, 3, 6] = 250  # image 1, row 3, column 6
    raw = bytes([0, 0, 0x08, 3]) + (2).to_bytes(4, "big") + (5).to_bytes(4, "big") + (7).to_bytes(4, "big")
    raw += img.tobytes()
    (tmp_path / "f.gz").write_bytes(gzip.compress(raw))
    x = read_idx(tmp_path / "f.gz")
    assert x.shape == (2, 5, 7) and x[1, 3, 6] == 250 and int(x.sum()) == 250
    # an int32 idx (code 0x0C) is big-endian in the file and native in memory
    (tmp_path / "i").write_bytes(idx_bytes(np.array([1, 256, -2], dtype=">i4")))
    assert read_idx(tmp_path / "i").tolist() == [1, 256, -2]


@pytest.mark.parametrize(
    "data,what",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc", "magic"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc", "header says"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc", "dtype"),
    ],
)
def test_idx_bad_files_are_clear_errors(tmp_path, data, what):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(DojoError, match=what) as e:
        read_idx(tmp_path / "bad")
    assert "bad" in e.value.problem and e.value.fix


def test_truncated_gzip_is_a_clear_error_without_verification(tmp_path, data_env):
    folder = tmp_path / "data_dir" / "mnist"
    write_idx_dataset(folder)
    p = folder / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(DojoError, match="train-images-idx3-ubyte.gz") as e:
        load_dataset("mnist", data_dir=tmp_path / "data_dir", verify=False)
    assert e.value.fix


def test_raw_file_wins_over_gz(tmp_path, data_env):
    folder = tmp_path / "data_dir" / "mnist"
    write_idx_dataset(folder, n_train=12, gz=True)
    write_idx_dataset(folder, n_train=20, gz=False)
    assert len(load_dataset("mnist", data_dir=tmp_path / "data_dir", verify=False).train) == 20


def test_idx_checksum_mismatch_names_the_file_and_the_fix(tmp_path, data_env):
    write_idx_dataset(tmp_path / "data_dir" / "fashion-mnist")
    with pytest.raises(ChecksumError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "data_dir", verify=True)
    assert "train-images-idx3-ubyte.gz" in e.value.problem and "md5" in e.value.problem
    assert "--download" in e.value.fix and "--no-verify" in e.value.fix


# ---- idx files that are damaged or do not fit together: clean errors (issue 16) ----------------------------


def _write_idx(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_label_out_of_range_is_a_clear_error(data_env, name):
    folder = data_env["data_dir"] / DATASETS.get(name).folder
    write_idx_dataset(folder, n_train=12)
    labels = (np.arange(12) % 10).astype(np.uint8)
    labels[5], labels[9] = 10, 255
    _write_idx(folder / "train-labels-idx1-ubyte.gz", idx_bytes(labels))
    with pytest.raises(DojoError) as e:
        load_dataset(name, data_dir=data_env["data_dir"], verify=False)
    p = e.value.problem
    assert "train-labels-idx1-ubyte.gz" in p and "2 labels are outside 0..9" in p and "label 10 of image 5" in p
    assert "--download" in e.value.fix


@pytest.mark.parametrize("n_labels", [11, 13])
def test_idx_image_label_count_mismatch_is_a_clear_error(data_env, n_labels):
    folder = data_env["data_dir"] / "mnist"
    write_idx_dataset(folder, n_train=12)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", idx_bytes((np.arange(n_labels) % 10).astype(np.uint8)))
    with pytest.raises(DojoError) as e:
        load_dataset("mnist", data_dir=data_env["data_dir"], verify=False)
    assert f"train-images-idx3-ubyte.gz holds 12 images but {folder}/train-labels-idx1-ubyte.gz holds {n_labels}" in (
        e.value.problem
    )
    assert "--download" in e.value.fix


def _deflate_broken(data: bytes) -> bytes:
    blob = bytearray(gzip.compress(data))
    blob[10] = 0xFF  # the first deflate block: BTYPE 11 (reserved) -> zlib.error "invalid block type"
    return bytes(blob)


IDX_DAMAGE = {
    # file, bytes written (raw, or .gz as given), words the error must hold
    "int32 labels cut mid-value": (
        "train-labels-idx1-ubyte",
        idx_bytes(np.arange(12, dtype=">i4"))[:-3],
        "header says (12,) = 12 values",
    ),
    "bad deflate data": ("train-images-idx3-ubyte.gz", None, "invalid block type"),
    "labels file as images": ("train-images-idx3-ubyte", idx_bytes(np.zeros(12, np.uint8)), "not an images file"),
    "images not 28x28": (
        "train-images-idx3-ubyte",
        idx_bytes(np.zeros((12, 28, 27), np.uint8)),
        "expected uint8 (N, 28, 28)",
    ),
    "float images": (
        "train-images-idx3-ubyte",
        bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 12, 28, 28) + b"\0" * 4 * 12 * 28 * 28,
        "float32",
    ),
    "float labels": (
        "train-labels-idx1-ubyte",
        bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 12) + b"\0" * 48,
        "expected (N,) integers",
    ),
    "2-d labels": ("train-labels-idx1-ubyte", idx_bytes(np.zeros((12, 1), np.uint8)), "expected (N,) integers"),
    "zero bytes": ("train-labels-idx1-ubyte", b"", "bad magic number"),
    "header only": ("train-labels-idx1-ubyte", bytes([0, 0, 8, 1]), "header is cut short"),
    "huge dims": ("train-images-idx3-ubyte", bytes([0, 0, 8, 3]) + b"\xff" * 12, "too large"),
    "trailing data": ("train-labels-idx1-ubyte", idx_bytes(np.zeros(12, np.uint8)) + b"x", "trailing data"),
}


@pytest.mark.parametrize("case", IDX_DAMAGE)
def test_truncated_or_malformed_idx_is_a_clear_error(data_env, case):
    folder = data_env["data_dir"] / "mnist"
    write_idx_dataset(folder, n_train=12, gz=False)
    name, data, what = IDX_DAMAGE[case]
    if data is None:
        data = _deflate_broken(idx_bytes(np.zeros((12, 28, 28), np.uint8)))
        (folder / "train-images-idx3-ubyte").unlink()
    (folder / name).write_bytes(data)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(DojoError) as e:
        load_dataset("mnist", data_dir=data_env["data_dir"], verify=False)
    assert str(folder / name) in e.value.problem and what in e.value.problem, e.value.problem
    assert e.value.fix
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing changed


@pytest.mark.parametrize("where", ["data-dir/mnist", "data-dir itself"])
def test_missing_idx_file_in_data_dir_is_an_error_not_another_copy(data_env, where):
    """A --data-dir copy with one file missing is not silently replaced by a complete copy found later in the
    resolution order (here $TORCHDOJO_DATA; the system copy in the finding); the error names the file and folder."""
    folder = data_env["data_dir"] / "mnist" if where == "data-dir/mnist" else data_env["data_dir"]
    write_idx_dataset(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx_dataset(data_env["env_data"] / "mnist", n_train=20)  # a complete copy further down the order
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(DataMissingError) as e:
        load_dataset("mnist", data_dir=data_env["data_dir"], verify=False)
    p = e.value.problem
    assert "t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz" in p and f"in {folder} is incomplete" in p
    assert "train-images" not in p  # only the missing file is named
    assert str(folder) in e.value.fix
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_partial_copy_is_not_downloaded_over(data_env):
    """With --download too: the partial folder is reported, nothing is fetched over the user's files."""
    import dataclasses

    from torchdojo.data.base import find_dataset

    calls = []
    spec = dataclasses.replace(DATASETS.get("mnist"), download=calls.append)
    write_idx_dataset(data_env["data_dir"] / "mnist")
    (data_env["data_dir"] / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataMissingError, match="train-images-idx3-ubyte"):
        find_dataset(spec, data_env["data_dir"], download=True)
    assert calls == []


def test_an_empty_data_dir_still_falls_through_to_the_next_place(data_env):
    """The stated choice: a --data-dir that holds none of the dataset's files is passed over (it may hold other
    datasets); only a partial copy stops the search."""
    (data_env["data_dir"] / "mnist").mkdir()
    (data_env["data_dir"] / "unrelated.txt").write_text("x")
    write_idx_dataset(data_env["env_data"] / "mnist", n_train=20)
    s = load_dataset("mnist", data_dir=data_env["data_dir"], verify=False)
    assert Path(s.source) == data_env["env_data"] / "mnist" and len(s.train) == 20


# ---- CIFAR-10 python pickles -------------------------------------------------------------------------------


def _cifar_row(k: int) -> np.ndarray:
    """One 3072-byte row: R plane (1024, row-major), then G, then B; three marked pixels."""
    row = np.zeros(3072, dtype=np.uint8)
    row[0 * 1024 + 1 * 32 + 30] = 255  # R at (y=1, x=30)
    row[1 * 1024 + 5 * 32 + 2] = 128  # G at (y=5, x=2)
    row[2 * 1024 + 31 * 32 + 0] = 77  # B at (y=31, x=0)
    row[3071] = k  # B at (31, 31): which image this is
    return row


def write_cifar(folder: Path, per_batch: int = 3) -> None:
    folder.mkdir(parents=True)
    k = 0
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = np.stack([_cifar_row(k + j) for j in range(per_batch)])
        (folder / name).write_bytes(cifar_batch(rows, [(k + j) % 10 for j in range(per_batch)]))
        k += per_batch
    meta = {"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar10_fixture_loads_planes_in_rgb_order(tmp_path, data_env):
    write_cifar(tmp_path / "data_dir" / "cifar-10-batches-py")
    s = load_dataset("cifar10", data_dir=tmp_path / "data_dir", verify=False)
    assert s.train.x.shape == (15, 3, 32, 32) and s.test.x.shape == (3, 3, 32, 32)
    x = s.train.x
    assert (x[:, 0, 1, 30] == 255).all() and (x[:, 1, 5, 2] == 128).all() and (x[:, 2, 31, 0] == 77).all()
    assert x[:, :, :, :].sum(dtype=torch.int64).item() == 15 * (255 + 128 + 77) + sum(range(15))
    assert x[:, 2, 31, 31].tolist() == list(range(15))  # batches concatenated in order 1..5
    assert s.test.x[:, 2, 31, 31].tolist() == [15, 16, 17]
    assert s.train.y.tolist() == [k % 10 for k in range(15)]
    assert s.classes == CIFAR_CLASSES


def test_cifar10_truncated_batch_is_a_clear_error_without_verification(tmp_path, data_env):
    folder = tmp_path / "data_dir" / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DojoError, match="data_batch_3 cannot be read") as e:
        load_dataset("cifar10", data_dir=tmp_path / "data_dir", verify=False)
    assert "--download" in e.value.fix


def test_cifar10_checksum(tmp_path, data_env):
    write_cifar(tmp_path / "data_dir" / "cifar-10-batches-py")
    with pytest.raises(ChecksumError, match="batches.meta") as e:  # every file read is verified, the meta first
        load_dataset("cifar10", data_dir=tmp_path / "data_dir", verify=True)
    assert "delete" in e.value.fix


# ---- STL-10 binaries ---------------------------------------------------------------------------------------


def test_stl10_fixture_is_column_major(tmp_path, data_env):
    folder = tmp_path / "data_dir" / "stl10_binary"
    folder.mkdir(parents=True)
    n = 3
    imgs = np.zeros((n, 3 * 96 * 96), dtype=np.uint8)
    # Column-major per channel: byte offset c*96*96 + x*96 + y for the pixel at row y, column x.
    imgs[:, 0 * 9216 + 70 * 96 + 10] = 200  # R at (y=10, x=70)
    imgs[:, 2 * 9216 + 5 * 96 + 90] = 99  # B at (y=90, x=5)
    for i in range(n):
        imgs[i, 1 * 9216] = i  # G at (0, 0)
    for split, labels in (("train", [1, 10, 5]), ("test", [2, 3, 4])):
        imgs.tofile(folder / f"{split}_X.bin")
        np.array(labels, dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    s = load_dataset("stl10", data_dir=tmp_path / "data_dir", verify=False)
    x = s.train.x
    assert x.shape == (3, 3, 96, 96) and x.dtype == torch.uint8
    assert (x[:, 0, 10, 70] == 200).all() and (x[:, 2, 90, 5] == 99).all()
    assert x[:, 0, 70, 10].sum() == 0 and x[:, 1, 0, 0].tolist() == [0, 1, 2]
    assert s.train.y.tolist() == [0, 9, 4] and s.test.y.tolist() == [1, 2, 3]
    assert s.classes == STL10_CLASSES
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    assert load_dataset("stl10", data_dir=tmp_path / "data_dir", verify=False).classes[9] == "c9"
    with pytest.raises(ChecksumError, match="train_X.bin"):
        load_dataset("stl10", data_dir=tmp_path / "data_dir", verify=True)


# ---- where datasets are looked for -------------------------------------------------------------------------


def test_missing_dataset_names_every_folder_and_how_to_get_it(tmp_path, data_env):
    with pytest.raises(DataMissingError) as e:
        load_dataset("cifar10", data_dir=data_env["data_dir"])
    for folder in (
        data_env["data_dir"] / "cifar-10-batches-py",
        data_env["data_dir"],
        data_env["env_data"] / "cifar-10-batches-py",
        data_env["cache"] / "torchdojo" / "data" / "cifar-10-batches-py",
    ):
        assert f"    {folder}\n" in e.value.problem + "\n"
    assert "cs.toronto.edu" in e.value.fix and "--download" in e.value.fix and "--data-dir" in e.value.fix


def test_missing_dataset_lists_system_dirs(data_env):
    with pytest.raises(DataMissingError) as e:
        load_dataset("mnist")
    assert "/usr/share/datasets/mnist" in e.value.problem
    assert str(data_env["env_data"] / "mnist") in e.value.problem


def test_resolution_order_data_dir_then_env_then_cache(data_env):
    places = {
        "data_dir": data_env["data_dir"] / "mnist",
        "env_data": data_env["env_data"] / "mnist",
        "cache": data_env["cache"] / "torchdojo" / "data" / "mnist",
    }
    for i, folder in enumerate(places.values()):
        write_idx_dataset(folder, n_train=10 + i)
    for i, (_, folder) in enumerate(places.items()):
        s = load_dataset("mnist", data_dir=data_env["data_dir"], verify=False)
        assert Path(s.source) == folder and len(s.train) == 10 + i
        for stem in IDX_STEMS:
            os.remove(folder / f"{stem}.gz")
    with pytest.raises(DataMissingError):
        load_dataset("mnist", data_dir=data_env["data_dir"])


def test_data_dir_itself_may_hold_the_files(data_env):
    write_idx_dataset(data_env["data_dir"], n_train=14)
    s = load_dataset("mnist", data_dir=data_env["data_dir"], verify=False)
    assert Path(s.source) == data_env["data_dir"] and len(s.train) == 14


# ---- subset_classes and stratified_split -------------------------------------------------------------------


def test_subset_classes_relabels_in_the_order_given(digits):
    sub = subset_classes(digits, ["7", "2"])  # digit-strings are indices
    assert sub.classes == ["7", "2"]
    for split, orig in ((sub.train, digits.train), (sub.test, digits.test)):
        assert (split.y == 0).sum() == (orig.y == 7).sum() and (split.y == 1).sum() == (orig.y == 2).sum()
        assert torch.equal(split.x[split.y == 0], orig.x[orig.y == 7])
    fm = subset_classes(digits, [3])
    assert fm.classes == ["3"] and (fm.train.y == 0).all()


def test_subset_classes_by_name_and_errors(digits):
    named = digits.train
    from torchdojo.data import ImageData, Splits

    s = Splits("toy", ImageData(named.x, named.y, [f"n{i}" for i in range(10)]), digits.test, "x")
    assert subset_classes(s, ["n9", "n0"]).classes == ["n9", "n0"]
    with pytest.raises(DojoError, match="'n11' is not in toy") as e:
        subset_classes(s, ["n11"])
    assert "n0, n1" in e.value.fix
    with pytest.raises(DojoError, match="repeat"):
        subset_classes(s, ["n1", "n1"])
    with pytest.raises(DojoError, match="out of range"):
        subset_classes(s, [10])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=300), st.floats(0, 0.9), st.integers(0, 2**31))
def test_stratified_split_properties(labels, frac, seed):
    y = torch.tensor(labels)
    tr, va = stratified_split(y, frac, seed)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0  # disjoint
    assert sorted(tr.tolist() + va.tolist()) == list(range(len(y)))  # complete
    for c in set(labels):  # each class's share kept
        n_c = labels.count(c)
        assert (y[va] == c).sum().item() == int(round(n_c * frac))
    tr2, va2 = stratified_split(y, frac, seed)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)  # seeded


def test_stratified_split_seed_changes_the_split_and_bad_fraction():
    y = torch.arange(1000) % 10
    a = stratified_split(y, 0.2, 0)[1]
    b = stratified_split(y, 0.2, 1)[1]
    assert len(a) == len(b) == 200 and not torch.equal(a, b)
    with pytest.raises(DojoError, match="val_fraction"):
        stratified_split(y, 1.0, 0)


# ---- the real Fashion-MNIST --------------------------------------------------------------------------------

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_FASHION.exists(), reason="Fashion-MNIST is not at /usr/share/datasets/fashion-mnist")
def test_real_fashion_mnist_loads_with_checksums(data_env):
    s = load_dataset("fashion-mnist", verify=True)  # found in the system folder; md5s checked
    assert Path(s.source) == REAL_FASHION
    assert s.train.x.shape == (60000, 1, 28, 28) and s.test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(s.train.y).tolist() == [6000] * 10 and torch.bincount(s.test.y).tolist() == [1000] * 10
    assert s.classes == FASHION_CLASSES
    mean, std = s.mean_std()
    assert 0.25 < mean[0] < 0.32 and 0.3 < std[0] < 0.4  # Fashion-MNIST's well-known 0.286 / 0.353
