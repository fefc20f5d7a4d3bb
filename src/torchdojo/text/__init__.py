"""Text data: registered datasets (`tweets` offline, `sst2`), tokenisation, vocabulary, bucketing."""

from torchdojo.text.batching import TextBatches, bucket_batches, pad_batch, padding_fraction
from torchdojo.text.datasets import TEXT_DATASETS, TextSplits, load_text_dataset
from torchdojo.text.vocab import PAD, UNK, Vocab, WordPiece, tokenize

__all__ = [
    "PAD",
    "TEXT_DATASETS",
    "UNK",
    "TextBatches",
    "TextSplits",
    "Vocab",
    "WordPiece",
    "bucket_batches",
    "load_text_dataset",
    "pad_batch",
    "padding_fraction",
    "tokenize",
]
