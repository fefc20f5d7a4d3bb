"""Hostile: prints 20 MB from forward."""

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        line = "x" * 1023
        for _ in range(20 * 1024):
            print(line)
        return super().forward(x)
