"""A denoising sequence autoencoder for text (MISSION G3) and the sentiment classifier that reuses its encoder.

Input: a corrupted sentence (token ids). Output: logits over the vocabulary for every token of the clean
sentence followed by `<eos>`, produced by a GRU decoder fed `<bos>` + the clean prefix (teacher forcing) and
conditioned on the sentence vector z. Loss: cross-entropy over the real (non-pad) target tokens. Because the
decoder sees nothing of the noisy input but z, everything it restores must pass through z: that bottleneck
is what the sentiment classifier reuses.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from torchdojo.text import PAD, UNK, Vocab, tokenize

SPECIALS = (PAD, UNK, "<mask>", "<bos>", "<eos>")


def dae_vocab(texts: list[str], min_freq: int = 2, max_size: int | None = None) -> Vocab:
    """The word vocabulary of `texts` with the DAE's extra specials: `<mask>` = 2, `<bos>` = 3, `<eos>` = 4."""
    base = Vocab.build(texts, min_freq=min_freq, max_size=None if max_size is None else max_size - 3)
    return Vocab([*SPECIALS, *(t for t in base.itos[2:] if t not in SPECIALS)])


def encode_texts(texts: list[str], vocab: Vocab, max_len: int) -> list[list[int]]:
    """Token ids of each text, cut to `max_len` tokens; empty texts become one `<unk>`."""
    return [vocab.encode(tokenize(t)[:max_len]) or [vocab.unk_id] for t in texts]


class SentenceEncoder(nn.Module):
    """ids (B, T) -> z (B, dim): embedding, bidirectional GRU, final states of both directions -> tanh(Linear)."""

    def __init__(self, vocab_size: int, emb: int = 128, dim: int = 256, pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb, padding_idx=pad_id)
        self.gru = nn.GRU(emb, dim // 2, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * (dim // 2), dim)
        self.dim = dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(
            self.embed(ids), lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)  # (2, B, dim/2): last state of the forward and of the backward pass
        return torch.tanh(self.proj(torch.cat([h[0], h[1]], dim=1)))  # (B, dim)


class TextDAE(nn.Module):
    """Encoder (noisy sentence -> z) and a GRU decoder (z, clean prefix -> next-token logits)."""

    def __init__(
        self, vocab_size: int, emb: int = 128, dim: int = 256, pad_id: int = 0, bos_id: int = 3, eos_id: int = 4
    ):
        super().__init__()
        self.encoder = SentenceEncoder(vocab_size, emb, dim, pad_id)
        self.init = nn.Linear(dim, dim)
        self.decoder = nn.GRU(emb + dim, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab_size)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def decode(self, z: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for each next token after `prefix` (B, T) (starting with `<bos>`), given z (B, D)."""
        emb = self.encoder.embed(prefix)  # the decoder shares the encoder's word embeddings
        inp = torch.cat([emb, z.unsqueeze(1).expand(-1, prefix.shape[1], -1)], dim=2)
        out, _ = self.decoder(inp, torch.tanh(self.init(z)).unsqueeze(0))
        return self.out(out)

    def forward(self, noisy: torch.Tensor, noisy_lengths: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(noisy, noisy_lengths), prefix)

    @torch.no_grad()
    def generate(self, noisy: torch.Tensor, noisy_lengths: torch.Tensor, max_len: int) -> list[list[int]]:
        """Greedy decoding until `<eos>` or `max_len` tokens."""
        z = self.encoder(noisy, noisy_lengths)
        h = torch.tanh(self.init(z)).unsqueeze(0)
        tok = torch.full((len(z), 1), self.bos_id, dtype=torch.long, device=z.device)
        outs = []
        for _ in range(max_len):
            inp = torch.cat([self.encoder.embed(tok), z.unsqueeze(1)], dim=2)
            o, h = self.decoder(inp, h)
            tok = self.out(o).argmax(-1)  # (B, 1)
            outs.append(tok)
        seqs = torch.cat(outs, dim=1).tolist()
        return [s[: s.index(self.eos_id)] if self.eos_id in s else s for s in seqs]


def teacher_forcing(
    clean: list[list[int]], bos_id: int, eos_id: int, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix, target), both (B, T+1): `<bos>` + clean and clean + `<eos>`, right-padded."""
    t = max(len(s) for s in clean) + 1
    prefix = torch.full((len(clean), t), pad_id, dtype=torch.long)
    target = torch.full((len(clean), t), pad_id, dtype=torch.long)
    for i, s in enumerate(clean):
        prefix[i, : len(s) + 1] = torch.tensor([bos_id, *s])
        target[i, : len(s) + 1] = torch.tensor([*s, eos_id])
    return prefix, target


def dae_loss(
    logits: torch.Tensor, target: torch.Tensor, pad_id: int = 0, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean token cross-entropy over the real (non-pad) target tokens (optionally label-smoothed over the
    vocabulary), the number of those tokens predicted right (a tensor the engine sums) and their number."""
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=pad_id, label_smoothing=label_smoothing)
    real = target != pad_id
    correct = ((logits.detach().argmax(-1) == target) & real).sum()
    return loss, correct, int(real.sum().item())


def mlp_head(d_in: int, d_hidden: int, num_classes: int, dropout: float = 0.2) -> nn.Sequential:
    """The sentiment head every classifier shares: dropout, Linear + ReLU, dropout, Linear."""
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_hidden, num_classes)
    )


class SentimentClassifier(nn.Module):
    """A sentence encoder (any module ids, lengths -> (B, dim)) and an MLP head (`mlp_head`).

    `freeze_encoder()` turns off the encoder's gradients and keeps it in eval mode even when the model is put
    in training mode (as `fit` does every epoch): a frozen encoder is a fixed feature extractor."""

    def __init__(self, encoder: SentenceEncoder, num_classes: int = 2, dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.head = mlp_head(encoder.dim, encoder.dim, num_classes, dropout)
        self.frozen = False

    def freeze_encoder(self) -> "SentimentClassifier":
        self.frozen = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        return self

    def train(self, mode: bool = True) -> "SentimentClassifier":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(ids, lengths))
