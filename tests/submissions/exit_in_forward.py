"""Hostile: ends the process from forward."""

import os

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        os._exit(0)
