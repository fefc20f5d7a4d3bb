"""The interface every classifier shares: `features` then `head`, and `reset_head(num_classes)`.

With it, freezing, feature maps, embeddings and feature caching work on every architecture.
"""

import torch
from torch import nn


class Classifier(nn.Module):
    """`forward(x) = head(features(x))`; `features` ends in a flat (B, num_features) vector."""

    features: nn.Module
    head: nn.Module
    num_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reset_head(self, num_classes: int) -> None:
        """Replace the final classifier with a fresh one for `num_classes` outputs."""
        last = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        if not isinstance(last, nn.Linear):
            raise TypeError(f"{type(self).__name__}: the head must end in nn.Linear to be reset")
        new = nn.Linear(last.in_features, num_classes)
        if isinstance(self.head, nn.Sequential):
            self.head[-1] = new
        else:
            self.head = new

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def flat_size(module: nn.Module, in_shape: tuple[int, int, int]) -> int:
    """Number of features `module` outputs per example for inputs of (C, H, W) `in_shape`."""
    with torch.no_grad():
        was = module.training
        module.eval()
        n = module(torch.zeros(1, *in_shape)).flatten(1).shape[1]
        module.train(was)
    return n
