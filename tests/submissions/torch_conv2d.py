"""Hostile: torch.conv2d (not in torch.nn, but the built-in convolution all the same)."""

import torch

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        return torch.conv2d(x, self.weight, self.bias, self.stride, self.padding)
