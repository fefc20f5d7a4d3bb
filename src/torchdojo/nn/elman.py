"""An Elman RNN cell written by hand, with `nn.RNNCell`'s parameter names, shapes and initialisation."""

import math

import torch
from torch import nn

_NONLINEARITIES = ("tanh", "relu")


class ElmanCell(nn.Module):
    """h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh); a drop-in for `nn.RNNCell` (state dicts swap)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        super().__init__()
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}")
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size}, {hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.nonlinearity = nonlinearity
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))  # (H, I)
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))  # (H, H)
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), as `nn.RNNCell` does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One step: x (B, I) or (I,), h (B, H) or (H,) or None (zeros) -> next h of h's shape."""
        if x.dim() not in (1, 2):
            raise ValueError(
                f"ElmanCell expects x of shape (B, {self.input_size}) or ({self.input_size},), got {tuple(x.shape)}"
            )
        if x.shape[-1] != self.input_size:
            raise ValueError(f"ElmanCell expects {self.input_size} input features, got {x.shape[-1]}")
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        elif unbatched:
            h = h.unsqueeze(0)
        if h.shape != (x.shape[0], self.hidden_size):
            expected = (x.shape[0], self.hidden_size)
            raise ValueError(f"ElmanCell expects h of shape {expected}, got {tuple(h.shape)}")
        pre = x @ self.weight_ih.T + h @ self.weight_hh.T  # (B, H)
        if self.bias_ih is not None:
            pre = pre + self.bias_ih + self.bias_hh
        out = torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        """Same summary line as nn.RNNCell."""
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s
