"""Broken: drops the last output column."""

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        return super().forward(x)[..., :-1]
