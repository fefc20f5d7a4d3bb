"""Dataset files are untrusted: a crafted CIFAR pickle runs nothing, with or without --no-verify, and is a clean
DojoError; every file read (batches.meta included) is checksummed; real-format batches (Python 2 pickles as
published, Python 3 pickles of protocols 2-5, bytes or str keys) still load; nothing in src/ unpickles
untrusted data unsafely (a static audit)."""

import ast
import builtins
import hashlib
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import cifar_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchdojo.cli import main
from torchdojo.data import catalog, load_dataset
from torchdojo.data.readers import SafeUnpickler, read_cifar_batch, read_cifar_meta
from torchdojo.errors import ChecksumError, DojoError

SRC = Path(__file__).parents[1] / "src" / "torchdojo"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# ---- crafted pickles ---------------------------------------------------------------------------------------


class TouchViaSystem:
    """Unpickling calls os.system("touch MARKER")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class TouchViaOpen:
    """Unpickling calls builtins.open(MARKER, "w"), which creates the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


class TouchViaEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w')",)


PAYLOADS = {"os.system": TouchViaSystem, "builtins.open": TouchViaOpen, "builtins.eval": TouchViaEval}


def _rows(n: int, first: int = 0) -> np.ndarray:
    rows = np.zeros((n, 3072), dtype=np.uint8)
    rows[:, 3071] = np.arange(first, first + n)
    return rows


def write_cifar(folder: Path, per_batch: int = 3) -> None:
    """A CIFAR-10 folder in the published layout (batches written as Python 3 pickles, protocol 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(BATCHES):
        rows = _rows(per_batch, k * per_batch)
        (folder / name).write_bytes(cifar_batch(rows, [(k * per_batch + j) % 10 for j in range(per_batch)]))
    meta = {"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def _crafted(folder: Path, target: str, payload: str, marker: Path) -> None:
    """Replace `target` (batches.meta or data_batch_1) by a pickle that would create `marker` when loaded: the
    whole file for the meta, a value nested inside an otherwise valid batch for data_batch_1."""
    evil = PAYLOADS[payload](marker)
    if target == "batches.meta":
        obj = evil
    else:
        obj = {"batch_label": evil, "labels": [0, 1, 2], "data": _rows(3), "filenames": []}
    (folder / target).write_bytes(pickle.dumps(obj, protocol=2))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_dir(data_env) -> Path:
    folder = data_env["data_dir"] / "cifar-10-batches-py"
    write_cifar(folder)
    return folder


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("target", ["batches.meta", "data_batch_1"])
def test_crafted_pickle_runs_nothing_with_no_verify(cifar_dir, data_env, tmp_path, target, payload):
    marker = tmp_path / "MARKER"
    _crafted(cifar_dir, target, payload, marker)
    with pytest.raises(DojoError) as e:
        load_dataset("cifar10", data_dir=data_env["data_dir"], verify=False)
    assert not marker.exists(), "the crafted pickle ran"
    assert target in e.value.problem and "refused" in e.value.problem and "nothing" in e.value.problem
    assert payload.split(".")[1] in e.value.problem  # the refused global is named (posix.system, builtins.open)
    assert "--download" in e.value.fix and "--no-verify does not change this" in e.value.fix


def test_batches_meta_is_checksummed(cifar_dir, data_env, tmp_path, monkeypatch):
    """Data batches that match the catalogue and a crafted batches.meta: verification refuses the meta before
    anything is unpickled (today's code did not checksum batches.meta and ran it)."""
    marker = tmp_path / "MARKER"
    _crafted(cifar_dir, "batches.meta", "os.system", marker)
    for name in BATCHES:  # as if the fixture's batches were the published ones
        monkeypatch.setitem(catalog.CIFAR10_MD5, name, _md5(cifar_dir / name))
    with pytest.raises(ChecksumError, match="batches.meta") as e:
        load_dataset("cifar10", data_dir=data_env["data_dir"], verify=True)
    assert not marker.exists()
    assert "delete" in e.value.fix
    assert catalog.CIFAR10_MD5["batches.meta"] == "5ff9c542aee3614f3951f8cda6e48888"  # the official file's md5


@pytest.mark.parametrize("target", ["batches.meta", "data_batch_1"])
def test_a_crafted_file_whose_checksum_matches_still_runs_nothing(cifar_dir, data_env, tmp_path, monkeypatch, target):
    """Defence in depth: even a catalogue that vouches for the crafted file (every md5 matching) runs nothing."""
    marker = tmp_path / "MARKER"
    _crafted(cifar_dir, target, "builtins.open", marker)
    for name in catalog.CIFAR10_MD5:
        monkeypatch.setitem(catalog.CIFAR10_MD5, name, _md5(cifar_dir / name))
    with pytest.raises(DojoError, match="refused"):
        load_dataset("cifar10", data_dir=data_env["data_dir"], verify=True)
    assert not marker.exists()


def test_crafted_meta_through_the_cli_with_no_verify(cifar_dir, data_env, tmp_path, capsys, monkeypatch):
    """The finding as a user meets it: `torchdojo run ... --no-verify` (the checksum error's own fix line)."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    _crafted(cifar_dir, "batches.meta", "os.system", marker)
    runs = tmp_path / "runs"
    args = ["run", "ladder", "--scale", "smoke", "--device", "cpu", "--quiet", "--set", "dataset=cifar10"]
    rc = main([*args, "--data-dir", str(data_env["data_dir"]), "--no-verify", "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    assert err.startswith("error: ") and "Traceback" not in err and "  fix: " in err
    assert "batches.meta" in err and "refused" in err


def test_refused_before_anything_is_called():
    """The unpickler refuses the global itself: the callable is never even looked up in its module."""
    blob = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
    with pytest.raises(DojoError, match=r"os\.system"):
        SafeUnpickler(io.BytesIO(blob), Path("x")).load()


# ---- valid files in every form the format takes ------------------------------------------------------------


class Py2Pickler(pickle._Pickler):  # type: ignore[misc]
    """Writes bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as the published CIFAR files were written
    by Python 2's cPickle: keys b"data", b"labels", ... and the array's raw data all come out as py2 str."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write(b"U" + bytes([n]) + obj if n < 256 else b"T" + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes}


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 2 names its reconstructor numpy._core.multiarray; Python 2's numpy wrote numpy.core.multiarray
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _forms(rows: np.ndarray, labels: list[int]) -> dict[str, bytes]:
    str_keys = {"batch_label": "b", "labels": labels, "data": rows, "filenames": ["a.png"] * len(labels)}
    bytes_keys = {b"batch_label": b"b", b"labels": labels, b"data": rows, b"filenames": [b"a.png"] * len(labels)}
    out = {f"py3-protocol{p}": pickle.dumps(str_keys, protocol=p) for p in (2, 3, 4, 5)}
    out["bytes-keys"] = pickle.dumps(bytes_keys, protocol=2)
    out["py2-published"] = py2_pickle(bytes_keys)
    out["cifar100-fine-labels"] = pickle.dumps({"fine_labels": labels, "data": rows}, protocol=2)
    out["numpy-labels"] = pickle.dumps({"labels": np.array(labels, dtype=np.int64), "data": rows}, protocol=4)
    out["numpy-scalar-labels"] = pickle.dumps({"labels": list(np.array(labels)), "data": rows}, protocol=2)
    return out


@pytest.mark.parametrize("form", list(_forms(_rows(1), [0])))
def test_valid_batch_loads_in_every_form(tmp_path, form):
    rows, labels = _rows(4, 7), [3, 1, 4, 1]
    (tmp_path / "b").write_bytes(_forms(rows, labels)[form])
    x, y = read_cifar_batch(tmp_path / "b", 10)
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8 and x[:, 2, 31, 31].tolist() == [7, 8, 9, 10]
    assert y.tolist() == labels and y.dtype == np.int64


def test_py2_fixture_is_what_python2_wrote():
    """The py2 fixture has the published files' opcodes: py2 str keys and data, numpy.core.multiarray."""
    blob = py2_pickle({b"data": _rows(1), b"labels": [0]})
    assert b"U\x04data" in blob and b"cnumpy.core.multiarray\n_reconstruct\n" in blob
    assert b"X\x04\x00\x00\x00data" not in blob  # no Python 3 str (BINUNICODE) keys


def test_valid_folder_loads_with_and_without_verify(cifar_dir, data_env, monkeypatch):
    s = load_dataset("cifar10", data_dir=data_env["data_dir"], verify=False)
    assert s.classes == CIFAR_CLASSES and s.train.x.shape == (15, 3, 32, 32) and len(s.test) == 3
    for name in catalog.CIFAR10_MD5:
        monkeypatch.setitem(catalog.CIFAR10_MD5, name, _md5(cifar_dir / name))
    assert load_dataset("cifar10", data_dir=data_env["data_dir"], verify=True).train.y.tolist() == [
        k % 10 for k in range(15)
    ]


def test_meta_in_the_published_py2_form(tmp_path):
    (tmp_path / "batches.meta").write_bytes(py2_pickle({b"label_names": [c.encode() for c in CIFAR_CLASSES]}))
    assert read_cifar_meta(tmp_path) == CIFAR_CLASSES


# ---- valid pickles of the wrong content --------------------------------------------------------------------


BAD_BATCHES = {
    "labels out of range": ({"labels": [0, 1, 10], "data": _rows(3)}, "outside 0..9"),
    "negative label": ({"labels": [0, -1, 2], "data": _rows(3)}, "outside 0..9"),
    "huge label": ({"labels": [0, 2**70, 2], "data": _rows(3)}, "outside 0..9"),
    "count mismatch": ({"labels": [0, 1], "data": _rows(3)}, "3 images but 2 labels"),
    "float data": ({"labels": [0], "data": np.zeros((1, 3072))}, "float64"),
    "wrong row size": ({"labels": [0], "data": np.zeros((1, 1024), np.uint8)}, "(1, 1024)"),
    "no data": ({"labels": [0]}, "'data' is NoneType"),
    "no labels": ({"data": _rows(1)}, "not a list of integers"),
    "string labels": ({"labels": ["cat"], "data": _rows(1)}, "not a list of integers"),
    "empty": ({"labels": [], "data": np.zeros((0, 3072), np.uint8)}, "no images"),
    "a list": ([1, 2, 3], "not a dict"),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_wrong_content_is_a_clear_error(tmp_path, case):
    obj, what = BAD_BATCHES[case]
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DojoError, match="data_batch_1") as e:
        read_cifar_batch(tmp_path / "data_batch_1", 10)
    assert what in e.value.problem and "--download" in e.value.fix


@pytest.mark.parametrize(
    "meta,what",
    [({"label_names": "airplane"}, "not a list"), ({"label_names": ["a", "a"]}, "repeats"), ({}, "not a list")],
)
def test_wrong_meta_is_a_clear_error(tmp_path, meta, what):
    (tmp_path / "batches.meta").write_bytes(pickle.dumps(meta))
    with pytest.raises(DojoError, match=what):
        read_cifar_meta(tmp_path)


@pytest.mark.parametrize("data", [b"", b"\x80\x02}q\x00(", b"garbage", b"\x80\x05\x95" + b"\xff" * 20])
def test_truncated_or_garbage_pickle_is_a_clear_error(tmp_path, data):
    (tmp_path / "batches.meta").write_bytes(data)
    with pytest.raises(DojoError, match="batches.meta cannot be read"):
        read_cifar_meta(tmp_path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=4))
def test_mutated_batches_load_or_fail_cleanly(tmp_path, cut, flips):
    """Truncated and bit-flipped real-format batches: each loads or is a DojoError, never another exception."""
    blob = bytearray(cifar_batch(_rows(2), [1, 2]))
    for pos, x in flips:
        blob[pos % len(blob)] ^= x
    path = tmp_path / "b"
    path.write_bytes(bytes(blob[: len(blob) - cut]))
    try:
        x, y = read_cifar_batch(path, 10)
    except DojoError:
        return
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and len(x) == len(y) and ((0 <= y) & (y < 10)).all()


# ---- the audit: nothing in src/ loads untrusted data unsafely ----------------------------------------------


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str) -> object:
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "not a constant"
    return None


def unsafe_loads(root: Path) -> list[str]:
    """Every call in `root`'s Python files that can run code from data: pickle/marshal/shelve/dill/joblib loads,
    torch.load without weights_only=True, np.load(allow_pickle=True), yaml.load/unsafe_load/full_load, eval,
    exec, trust_remote_code=True."""
    found = []
    banned = {
        "pickle.load",
        "pickle.loads",
        "pickle.Unpickler",
        "marshal.load",
        "marshal.loads",
        "shelve.open",
        "dill.load",
        "dill.loads",
        "joblib.load",
        "yaml.load",
        "yaml.unsafe_load",
        "yaml.full_load",
        "torch.hub.load",
        "eval",
        "exec",
        "pd.read_pickle",
        "pandas.read_pickle",
    }
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name, where = _dotted(node.func), f"{path.relative_to(root)}:{node.lineno}"
            if name in banned:
                found.append(f"{where} {name}")
            elif name == "torch.load" and _kw(node, "weights_only") is not True:
                found.append(f"{where} torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") not in (None, False):
                found.append(f"{where} np.load with allow_pickle")
            elif _kw(node, "trust_remote_code") not in (None, False):
                found.append(f"{where} trust_remote_code")
    return found


def test_audit_no_unsafe_load_in_src():
    assert unsafe_loads(SRC) == []


def test_audit_catches_each_kind(tmp_path):
    (tmp_path / "m.py").write_text(
        "import pickle, torch, numpy as np, yaml\n"
        "pickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
        "yaml.load(s)\neval('1')\nm.eval()\ntorch.load(p, weights_only=True)\nnp.load(p)\nyaml.safe_load(s)\n"
    )
    assert [f.split(" ", 1)[1] for f in unsafe_loads(tmp_path)] == [
        "pickle.load",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "np.load with allow_pickle",
        "yaml.load",
        "eval",
    ]
