"""Hostile: A1 forbids torch.nn's layers; this is nn.Conv2d under another name (numbers match)."""

from torch import nn


class Conv2d(nn.Conv2d):
    pass
