"""An RNN sentence classifier (MISSION F1) with interchangeable cells and exact truncated BPTT.

Truncation is per sentence: for a sentence of length T and `tbptt_steps=t`, the state that enters step T - t
is detached, so the loss on the final state reaches back exactly t steps (positions T - t .. T - 1, 0-based)
and nothing earlier gets a gradient. A `Trace` keeps the embeddings and states so that the per-position
gradients ||dL/dx_k|| and ||dL/dh_k|| can be read after `backward()`.
"""

import dataclasses

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from torchdojo.rnn.cells import CELLS, build_cell


@dataclasses.dataclass
class Trace:
    """Tensors kept by one forward pass: embeddings x (B, T, E) and the state after every step."""

    x: torch.Tensor | None = None
    states: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T tensors (B, H)

    def grad_norms(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """After backward: ||dL/dx_k|| and ||dL/dh_k||, (B, T) each (dh is None for nn.RNN: fused states)."""
        if self.x is None or self.x.grad is None:
            raise RuntimeError("call loss.backward() on a forward pass made with a Trace first")
        dx = self.x.grad.norm(dim=-1)
        if not self.states:
            return dx, None
        dh = torch.stack([s.grad if s.grad is not None else torch.zeros_like(s) for s in self.states], 1)
        return dx, dh.norm(dim=-1)

    def state_norms(self) -> torch.Tensor:
        """||h_k|| (B, T)."""
        return torch.stack([s.detach() for s in self.states], 1).norm(dim=-1)


class RNNClassifier(nn.Module):
    """Embedding -> recurrent cell over the tokens -> final state -> dropout -> linear head.

    `cell` is a name in `CELLS` (stepped in Python, any cell) or "torch" (`nn.RNN`, fused, packed sequences).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        cell: str = "elman",
        embed_dim: int = 64,
        hidden_size: int = 128,
        dropout: float = 0.1,
        pad_id: int = 0,
    ):
        super().__init__()
        self.cell_name, self.hidden_size = cell, hidden_size
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        if cell == "torch":
            self.rnn: nn.Module = nn.RNN(embed_dim, hidden_size, batch_first=True)
        else:
            self.rnn = build_cell(cell, embed_dim, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_classes)

    @staticmethod
    def cell_names() -> list[str]:
        """Every accepted `cell` value."""
        return [*CELLS.names(), "torch"]

    def encode(
        self, ids: torch.Tensor, lengths: torch.Tensor, tbptt_steps: int = 0, trace: Trace | None = None
    ) -> torch.Tensor:
        """Final state (B, H) of each sentence; ids (B, T) right-padded, lengths (B,) >= 1."""
        x = self.embed(ids)  # (B, T, E)
        if trace is not None:
            if x.requires_grad:  # not under torch.no_grad()
                x.retain_grad()
            trace.x = x
        if self.cell_name == "torch":
            return self._encode_fused(x, lengths, tbptt_steps)
        b, t_max, _ = x.shape
        lengths = lengths.to(x.device)
        # (B,) the step whose incoming state is detached; -1 = never
        cut = lengths - tbptt_steps if tbptt_steps > 0 else torch.full_like(lengths, -1)
        h = x.new_zeros(b, self.hidden_size)
        for k in range(t_max):
            h = torch.where((cut == k).unsqueeze(1), h.detach(), h)  # truncation: no gradient past this step
            h_new = self.rnn(x[:, k], h)  # (B, H)
            h = torch.where((k < lengths).unsqueeze(1), h_new, h)  # padding keeps the last real state
            if trace is not None:
                if h.requires_grad:
                    h.retain_grad()
                trace.states.append(h)
        return h

    def _encode_fused(self, x: torch.Tensor, lengths: torch.Tensor, tbptt_steps: int) -> torch.Tensor:
        """nn.RNN over packed sequences; truncation runs the first T - t steps, detaches, runs the last t."""
        lengths = lengths.cpu()
        b = x.shape[0]
        if tbptt_steps <= 0:
            _, h = self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            return h[0]  # (B, H)
        head = (lengths - tbptt_steps).clamp(min=0)  # (B,) tokens before the window
        tail = lengths - head  # (B,) tokens in the window, <= t
        h0 = x.new_zeros(1, b, self.hidden_size)
        rows = torch.nonzero(head > 0).flatten()
        if len(rows):
            packed = pack_padded_sequence(x[rows], head[rows], batch_first=True, enforce_sorted=False)
            _, h_head = self.rnn(packed)
            h0 = h0.index_copy(1, rows.to(x.device), h_head)
        # the window of each row: tokens head_b .. T_b - 1, left-aligned into (B, t, E)
        pos = head.unsqueeze(1) + torch.arange(int(tail.max()))  # (B, t)
        pos = torch.minimum(pos, (lengths - 1).unsqueeze(1)).to(x.device)
        window = x.gather(1, pos.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        packed = pack_padded_sequence(window, tail, batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed, h0.detach())
        return h[0]

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor, tbptt_steps: int = 0, trace: Trace | None = None
    ) -> torch.Tensor:
        """Logits (B, K)."""
        return self.head(self.drop(self.encode(ids, lengths, tbptt_steps, trace)))
