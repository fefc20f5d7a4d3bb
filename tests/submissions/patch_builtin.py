"""Hostile: at import, patches F.conv2d and nn.Conv2d.forward to agree with a wrong layer (zeros)."""

import torch
import torch.nn.functional as F
from torch import nn

from correct_conv import Conv2d as Base


def _zeros(x, weight, bias=None, stride=1, padding=0, *rest):
    oh = (x.shape[2] + 2 * padding - weight.shape[2]) // stride + 1
    ow = (x.shape[3] + 2 * padding - weight.shape[3]) // stride + 1
    return x.new_zeros(x.shape[0], weight.shape[0], oh, ow) + 0 * weight.sum() + 0 * x.sum()


F.conv2d = _zeros
torch.conv2d = _zeros
nn.Conv2d.forward = lambda self, x: _zeros(x, self.weight, self.bias, self.stride[0], self.padding[0])


class Conv2d(Base):
    def forward(self, x):
        return _zeros(x, self.weight, self.bias, self.stride, self.padding)
