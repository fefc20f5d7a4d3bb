"""Hostile: switches torch's default dtype to float64 at import; its outputs follow the default dtype."""

import torch

from correct_conv import Conv2d as Base

torch.set_default_dtype(torch.float64)


class Conv2d(Base):
    def forward(self, x):
        y = super().forward(x)
        return torch.zeros(y.shape) + y  # float64 whatever x is
