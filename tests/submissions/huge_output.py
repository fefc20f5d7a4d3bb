"""Broken: returns a 24 MB output (wrong shape, and over the 16 MB file-size limit of its results)."""

import torch

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        return torch.zeros(6 * 2**20, dtype=x.dtype) + self.weight.sum()
