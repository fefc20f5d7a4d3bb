"""Hostile: forks as many sleeping processes as it can (1000 asked for) in forward."""

import os
import time

from correct_conv import Conv2d as Base


class Conv2d(Base):
    def forward(self, x):
        for _ in range(1000):
            if os.fork() == 0:
                time.sleep(600)
                os._exit(0)
        return super().forward(x)
