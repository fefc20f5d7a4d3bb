"""SST-2 (binary Stanford Sentiment Treebank) from GLUE TSV files or a local Hugging Face `datasets` cache.

GLUE's `SST-2/train.tsv` and `dev.tsv` have a header `sentence<TAB>label` (label 0 = negative, 1 = positive);
its `test.tsv` is unlabelled, so the labelled dev split serves as the test split, as is usual.
"""

import csv
import io
import os
from pathlib import Path

from torchdojo.data.base import DatasetSpec
from torchdojo.errors import DojoError

SST2_CLASSES = ("negative", "positive")
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
SST2_HOW = f"download {SST2_URL} (GLUE) and unzip it; the folder must hold train.tsv and dev.tsv"


def read_text_file(path: Path, what: str, fix: str) -> str:
    """The text of a UTF-8 file (a BOM allowed); a DojoError naming the file, the line and byte offset of the
    first byte that is not UTF-8, and how to convert the file, instead of a UnicodeDecodeError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DojoError(f"cannot read {what} {path}: {e.strerror or e}", "check the file and its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1)
        bad = data[e.start : max(e.end, e.start + 1)]
        src = "UTF-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "LATIN1"
        raise DojoError(
            f"{what} {path} is not UTF-8: line {line} (byte offset {e.start:,}, column {col + 1}) holds byte(s) "
            f"{bad!r} that UTF-8 cannot decode; the file must be UTF-8 (this one looks like {src.lower()})",
            f"convert it: iconv -f {src} -t UTF-8 {path} > {path}.utf8 && mv {path}.utf8 {path}; {fix}",
        ) from None


def read_glue_tsv(path: Path) -> list[tuple[str, int]]:
    """(sentence, label) rows of a GLUE SST-2 TSV file (UTF-8); a clear error if the encoding, the header or
    a label is wrong."""
    fix = f"or fetch the GLUE copy again ({SST2_URL})"
    text = read_text_file(Path(path), "SST-2 file", fix)
    out: list[tuple[str, int]] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["sentence", "label"]:
            raise DojoError(
                f"{path} is not a GLUE SST-2 file (header {header!r}, not sentence<TAB>label)",
                "use train.tsv / dev.tsv from the GLUE SST-2 zip",
            )
        for row in reader:
            if not row:
                continue
            if len(row) != 2 or row[1].strip() not in ("0", "1"):
                shown = repr(row) if len(repr(row)) <= 200 else repr(row)[:200] + "..."
                raise DojoError(
                    f"{path} line {reader.line_num}: expected sentence<TAB>0|1, got {shown}",
                    "the file is damaged; fetch it again",
                )
            out.append((row[0].strip(), int(row[1])))
    except csv.Error as e:  # a NUL byte, a field over csv's size limit
        raise DojoError(f"{path} line {reader.line_num}: {e}", "the file is damaged; fetch it again") from None
    return out


def _download(folder: Path) -> None:
    """Fetch GLUE's SST-2 zip and unpack train.tsv / dev.tsv / test.tsv into `folder`."""
    import io
    import urllib.request
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(SST2_URL, timeout=60) as r:  # noqa: S310 (fixed https URL)
        blob = r.read()
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for name in ("train.tsv", "dev.tsv", "test.tsv"):
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(z.read(f"SST-2/{name}"))
            tmp.replace(folder / name)


SST2_SPEC = DatasetSpec(
    name="sst2",
    folder="sst2",
    files=("train.tsv", "dev.tsv"),
    load=None,  # type: ignore[arg-type]
    how_to_get=SST2_HOW,
    download=_download,
    description="SST-2 movie-review sentences, GLUE TSV",
)


def read_hf_cache() -> tuple[list[tuple[str, int]], list[tuple[str, int]], str] | None:
    """(train, validation, source) from a local Hugging Face `datasets` cache of glue/sst2, or None."""
    from importlib.util import find_spec

    if find_spec("datasets") is None:  # optional dependency
        return None
    # Never reach the network from here; `datasets` reads these when it is first imported.
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        from datasets import load_dataset

        for repo, conf in (("nyu-mll/glue", "sst2"), ("glue", "sst2"), ("stanfordnlp/sst2", None)):
            try:
                ds = load_dataset(repo, conf) if conf else load_dataset(repo)
            except Exception:  # not cached under this name
                continue
            pick = {s: [(str(r["sentence"]).strip(), int(r["label"])) for r in ds[s]] for s in ("train", "validation")}
            return pick["train"], pick["validation"], f"huggingface cache {repo}"
        return None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
