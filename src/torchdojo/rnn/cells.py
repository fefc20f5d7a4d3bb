"""Recurrent cells (MISSION F2, F3) with one interface, `forward(x (B, I), h (B, H)) -> h_next (B, H)`.

- `ResetGateCell`: an Elman candidate times a reset gate that looks only at the input token.
- `LipschitzCell`: h_{t+1} = A h_t + tanh(W h_t + U x_{t+1} + b), plain (free A, W) or with the paper's
  structured A and W (Erichson et al., "Lipschitz Recurrent Neural Networks", ICLR 2021).
`CELLS` registers them with the hand-written Elman cell and `nn.RNNCell`; `build_cell(name, I, H)` makes one.
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from torchdojo.nn.elman import ElmanCell
from torchdojo.registry import Registry


def _uniform_(p: torch.Tensor, hidden_size: int) -> None:
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        p.uniform_(-bound, bound)


def _state(x: torch.Tensor, h: torch.Tensor | None, hidden_size: int) -> torch.Tensor:
    return x.new_zeros(x.shape[0], hidden_size) if h is None else h


class ResetGateCell(nn.Module):
    """h_t = tanh(W_ih x_t + W_hh h_{t-1} + b) * R_t with R_t = sigmoid(W_r x_t + b_r): a "reset button".

    The gate is a sigmoid because it must be able to reach 0 (wipe the state: the product is ~0 whatever the
    candidate) and 1 (keep the candidate unchanged) smoothly, and never flip its sign; tanh would allow a
    negative "reset" that inverts the state, ReLU is unbounded above and has zero gradient once it is off.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.candidate = ElmanCell(input_size, hidden_size)  # tanh(W_ih x + b_ih + W_hh h + b_hh), (B, H)
        self.weight_r = nn.Parameter(torch.empty(hidden_size, input_size))  # (H, I)
        self.bias_r = nn.Parameter(torch.empty(hidden_size))
        _uniform_(self.weight_r, hidden_size)
        with torch.no_grad():
            self.bias_r.fill_(1.0)  # start mostly open (sigmoid(1) = 0.73): remember by default

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """R_t = sigmoid(W_r x_t + b_r): (B, I) -> (B, H); a function of the current input only."""
        return torch.sigmoid(x @ self.weight_r.T + self.bias_r)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One step: x (B, I), h (B, H) or None -> h_next (B, H)."""
        return self.candidate(x, _state(x, h, self.hidden_size)) * self.gate(x)


def structured(m: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """(1 - beta)(M + M^T) + beta (M - M^T) - gamma I: a symmetric / skew-symmetric mix, shifted by -gamma."""
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    return (1 - beta) * (m + m.T) + beta * (m - m.T) - gamma * eye


class LipschitzCell(nn.Module):
    """h_{t+1} = A h_t + tanh(W h_t + U x_{t+1} + b), with A, W, U, b parameters (MISSION F3).

    `structured=False` (the plain form): A and W are free (H, H) matrices. `structured=True`: the paper's
    form, A = I + eps * A_{beta,gamma_a} and W = W_{beta,gamma_w} built by `structured` from free matrices,
    and the tanh term scaled by eps (its forward-Euler step of h' = A h + tanh(W h + U x + b)). With beta near
    1 the matrices are nearly skew-symmetric, so their eigenvalues sit near the imaginary axis shifted left by
    gamma: the state neither explodes nor dies out quickly.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        structured: bool = False,
        beta: float = 0.75,
        gamma_a: float = 0.001,
        gamma_w: float = 0.001,
        eps: float = 0.03,
        init_std: float = 0.1,
    ):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.is_structured, self.beta, self.eps = structured, beta, eps
        self.gamma_a, self.gamma_w = gamma_a, gamma_w
        self.A = nn.Parameter(torch.empty(hidden_size, hidden_size))  # (H, H); M_A when structured
        self.W = nn.Parameter(torch.empty(hidden_size, hidden_size))  # (H, H); M_W when structured
        self.U = nn.Parameter(torch.empty(hidden_size, input_size))  # (H, I)
        self.b = nn.Parameter(torch.zeros(hidden_size))
        with torch.no_grad():
            if structured:  # the paper's N(0, sigma^2 / H) initialisation of M_A and M_W
                self.A.normal_(0, init_std / math.sqrt(hidden_size))
                self.W.normal_(0, init_std / math.sqrt(hidden_size))
            else:
                _uniform_(self.A, hidden_size)
                _uniform_(self.W, hidden_size)
        _uniform_(self.U, hidden_size)

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective (A, W) of h_{t+1} = A h_t + scale * tanh(W h_t + U x + b)."""
        if not self.is_structured:
            return self.A, self.W
        eye = torch.eye(self.hidden_size, dtype=self.A.dtype, device=self.A.device)
        a = eye + self.eps * structured(self.A, self.beta, self.gamma_a)
        return a, structured(self.W, self.beta, self.gamma_w)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One step: x (B, I), h (B, H) or None -> h_next (B, H)."""
        h = _state(x, h, self.hidden_size)
        a, w = self.matrices()
        drive = torch.tanh(h @ w.T + x @ self.U.T + self.b)  # (B, H)
        return h @ a.T + (self.eps * drive if self.is_structured else drive)


CellFactory = Callable[[int, int], nn.Module]
CELLS: Registry[CellFactory] = Registry("rnn cell")
CELLS.register("elman", ElmanCell)
CELLS.register("rnncell", nn.RNNCell)
CELLS.register("reset", ResetGateCell)
CELLS.register("lipschitz", LipschitzCell)
CELLS.register("lipschitz-structured", lambda i, h: LipschitzCell(i, h, structured=True))


def build_cell(name: str, input_size: int, hidden_size: int) -> nn.Module:
    """A registered cell: `forward(x (B, I), h (B, H)) -> h_next (B, H)`."""
    return CELLS.get(name)(input_size, hidden_size)
