"""Collapse detection: the triplet loss can be "solved" by mapping every image to one point, where
d(a, p) = d(a, n) = 0 and the loss sits at exactly the margin. Two signals, either is a warning:
the embeddings' mean pairwise distance falls near 0, or the triplet loss stays at the margin.
"""

import dataclasses


@dataclasses.dataclass
class CollapseDetector:
    """Fed once per epoch with the embeddings' spread and the triplet loss; `warnings()` says what it saw."""

    margin: float
    min_spread: float = 0.05  # mean pairwise distance of unit embeddings; max 2, random about 1.41
    loss_tol: float = 0.02  # "at the margin" = within loss_tol * margin of it
    patience: int = 3  # epochs in a row at the margin before it counts as stuck
    spreads: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)

    def update(self, spread: float, triplet_loss: float | None = None) -> None:
        self.spreads.append(spread)
        if triplet_loss is not None:
            self.losses.append(triplet_loss)

    def collapsed_spread(self) -> bool:
        return bool(self.spreads) and self.spreads[-1] < self.min_spread

    def stuck_at_margin(self) -> bool:
        tail = self.losses[-self.patience :]
        return len(tail) >= self.patience and all(abs(v - self.margin) <= self.loss_tol * self.margin for v in tail)

    def warnings(self) -> list[str]:
        out = []
        if self.collapsed_spread():
            out.append(
                f"embeddings collapsed: mean pairwise distance of the unit embeddings is "
                f"{self.spreads[-1]:.4f} (< {self.min_spread}); every image maps to nearly one point"
            )
        if self.stuck_at_margin():
            out.append(
                f"triplet loss stuck at the margin ({self.margin}) for the last {self.patience} epochs "
                f"({', '.join(f'{v:.4f}' for v in self.losses[-self.patience :])}): d(a,p) = d(a,n), "
                "the usual sign of a collapse; lower the lr, use semi-hard mining or add the CE term"
            )
        return out

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)
