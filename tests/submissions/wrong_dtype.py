"""Broken: returns float64 whatever the input's dtype."""

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        return super().forward(x).double()
