"""Hostile: allocates 50 GB in forward."""

import torch

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        junk = torch.ones(50 * 2**30 // 4)  # 50 GB of float32
        return super().forward(x) + junk[0]
