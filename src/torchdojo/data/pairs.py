"""H1's offline image + caption task: a grayscale item and a short generated caption, labelled (class, colour).

Each example pairs an image with a caption of `length` tokens: one colour word (the item's colour, which a
grayscale image cannot show), one garment-group word (true with probability 1 - `noise`, else the word of a
random other group) and filler words, in random order. The label is class x colour (2 x classes labels), so
neither modality alone can reach it: the image gives the class but not the colour, the caption the colour
but only a noisy hint of the class. `ceilings` gives the best accuracy each modality alone allows.
"""

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from torchdojo.data.base import ImageData
from torchdojo.data.loader import TensorBatches

COLOURS = {"dark": ("black", "navy", "dark"), "light": ("white", "cream", "light")}
FILLER = ("a", "the", "new", "nice", "item", "for", "sale", "in", "stock")
# Fashion-MNIST's classes by garment group; other datasets are grouped by class index mod 3
FASHION_GROUPS = {
    "top": (("T-shirt/top", "Pullover", "Coat", "Shirt"), ("top", "upper")),
    "footwear": (("Sandal", "Sneaker", "Ankle boot"), ("shoe", "footwear")),
    "other": (("Trouser", "Dress", "Bag"), ("bottom", "misc")),
}


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Token ids (0 = padding), the group of each image class and the words naming each group and colour."""

    words: tuple[str, ...]
    class_group: tuple[int, ...]  # image class -> group index
    group_words: tuple[tuple[str, ...], ...]
    group_names: tuple[str, ...]

    def ids(self, words: Sequence[str]) -> list[int]:
        return [self.words.index(w) for w in words]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i] for i in ids if i)


def vocabulary(classes: Sequence[str]) -> Vocabulary:
    """The caption vocabulary for a dataset's class names (Fashion-MNIST: garment groups; else index mod 3)."""
    if all(any(c in members for members, _ in FASHION_GROUPS.values()) for c in classes):
        names = tuple(FASHION_GROUPS)
        group_words = tuple(words for _, words in FASHION_GROUPS.values())
        class_group = tuple(next(i for i, (m, _) in enumerate(FASHION_GROUPS.values()) if c in m) for c in classes)
    else:
        names = ("group-0", "group-1", "group-2")
        group_words = (("first", "one"), ("second", "two"), ("third", "three"))
        class_group = tuple(i % 3 for i in range(len(classes)))
    words = ("<pad>", *[w for ws in COLOURS.values() for w in ws], *[w for ws in group_words for w in ws], *FILLER)
    return Vocabulary(words, class_group, group_words, names)


@dataclasses.dataclass
class PairData:
    """Images (N, C, H, W) uint8, caption token ids (N, L), labels 2 * image class + colour (0 dark, 1 light)."""

    images: torch.Tensor
    tokens: torch.Tensor
    y: torch.Tensor
    image_class: torch.Tensor
    colour: torch.Tensor
    group_word_true: torch.Tensor  # bool: the caption names the item's true group
    classes: list[str]
    vocab: Vocabulary

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> "PairData":
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device)
        return PairData(**moved)


def make_pairs(data: ImageData, noise: float, length: int, seed: int) -> PairData:
    """One caption per image of `data` (seeded): colour uniform, the group word wrong with probability `noise`."""
    if length < 2:
        raise ValueError("a caption needs at least 2 tokens (colour and group)")
    vocab = vocabulary(data.classes)
    g = torch.Generator().manual_seed(seed)
    n, groups = len(data), len(vocab.group_words)
    y_img = data.y.cpu()
    colour = torch.randint(0, 2, (n,), generator=g)
    true_group = torch.tensor(vocab.class_group)[y_img]
    wrong = torch.rand(n, generator=g) < noise
    shift = torch.randint(1, groups, (n,), generator=g)  # another group, uniformly
    said_group = torch.where(wrong, (true_group + shift) % groups, true_group)
    colour_words = list(COLOURS.values())
    tokens = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
        words = [pick(colour_words[int(colour[i])]), pick(vocab.group_words[int(said_group[i])])]
        words += [pick(FILLER) for _ in range(length - 2)]
        order = torch.randperm(length, generator=g).tolist()
        tokens[i] = torch.tensor(vocab.ids([words[j] for j in order]))
    classes = [f"{c}, {col}" for c in data.classes for col in COLOURS]
    return PairData(data.x.cpu(), tokens, 2 * y_img + colour, y_img, colour, ~wrong, classes, vocab)


def ceilings(pairs: PairData, noise: float) -> dict[str, float]:
    """The best expected accuracy from each input alone, from how the captions are generated.

    image: the class read perfectly, the colour guessed (1/2). caption: the colour read, the class guessed
    as the most likely one given the group word (P(c) P(word | c), with the class frequencies of `pairs`).
    both: 1 (the image gives the class, the caption the colour)."""
    k = len(pairs.classes) // 2
    prior = torch.bincount(pairs.image_class.cpu(), minlength=k).double() / len(pairs)
    groups = torch.tensor(pairs.vocab.class_group)
    n_groups = len(pairs.vocab.group_words)
    text = 0.0
    for w in range(n_groups):
        p_word = torch.where(groups == w, 1 - noise, noise / (n_groups - 1))
        text += float((prior * p_word).max())
    return {"image": 0.5, "text": text, "both": 1.0}


class PairBatches:
    """((images, tokens), labels) batches: the images through `TensorBatches` (normalised, shuffled by seed and
    epoch, sharded under DDP), the captions and labels of the same examples beside them."""

    def __init__(
        self,
        pairs: PairData,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        shuffle: bool = False,
        seed: int = 0,
    ):
        self.pairs = pairs
        index = torch.arange(len(pairs), device=pairs.images.device)
        self.images = TensorBatches(
            ImageData(pairs.images, index, pairs.classes), batch_size, mean, std, shuffle=shuffle, seed=seed
        )

    @property
    def num_global(self) -> int:
        return self.images.num_global

    def positions(self) -> torch.Tensor:
        return self.images.positions()

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> "PairBatches":
        self.images.set_epoch(epoch)
        return self

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        for x, idx in self.images:
            yield (x, self.pairs.tokens[idx]), self.pairs.y[idx]


def pair_examples(pairs: PairData, n: int) -> list[dict[str, Any]]:
    """The first `n` examples as table rows: caption, image class, colour, label, whether the group word is true."""
    return [
        {
            "caption": pairs.vocab.decode(pairs.tokens[i].tolist()),
            "image class": pairs.classes[2 * int(pairs.image_class[i])].rsplit(", ", 1)[0],
            "colour": list(COLOURS)[int(pairs.colour[i])],
            "label": pairs.classes[int(pairs.y[i])],
            "group word true": bool(pairs.group_word_true[i]),
        }
        for i in range(min(n, len(pairs)))
    ]
