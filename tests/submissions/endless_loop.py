"""Hostile: forward never returns."""

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        while True:
            pass
