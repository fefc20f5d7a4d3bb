"""A fully convolutional YOLO-style detector with one or several output scales.

Backbone: stride-2 3x3 conv blocks (BN, LeakyReLU) down to stride 32. A 1x1 head at each chosen stride
predicts, per cell and per anchor prior, (tx, ty, tw, th, objectness, class logits). Being fully
convolutional, it runs on any input whose side is a multiple of 32: the grid simply grows with the image.
"""

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)
    )


class Detector(nn.Module):
    """`anchors[s]` (A_s, 2) are the (w, h) priors in pixels of output scale s, at stride `strides[s]`."""

    def __init__(self, strides: tuple[int, ...], anchors: list[torch.Tensor], num_classes: int, width: int = 16):
        super().__init__()
        if len(strides) != len(anchors) or any(s not in (8, 16, 32) for s in strides):
            raise ValueError(f"strides must be a subset of 8, 16, 32 with one anchor set each, got {strides}")
        chans = [3, width, 2 * width, 4 * width, 8 * width, 8 * width]  # strides 2, 4, 8, 16, 32
        depth = {8: 3, 16: 4, 32: 5}[max(strides)]  # stride-2 stages down to the coarsest output
        self.stages = nn.ModuleList(_block(chans[i], chans[i + 1]) for i in range(depth))
        self.strides, self.num_classes = tuple(strides), num_classes
        for s, a in zip(strides, anchors, strict=True):
            self.register_buffer(f"anchors_{s}", a.float().clone())
        self.heads = nn.ModuleDict(
            {
                str(s): nn.Conv2d(chans[{8: 3, 16: 4, 32: 5}[s]], len(a) * (5 + num_classes), 1)
                for s, a in zip(strides, anchors, strict=True)
            }
        )

    def anchors(self, stride: int) -> torch.Tensor:
        return getattr(self, f"anchors_{stride}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (B, A, 5 + classes, H/stride, W/stride) tensor per output scale."""
        outs, h = [], x
        for i, stage in enumerate(self.stages):
            stride = 2 ** (i + 1)
            h = stage(h)
            if stride in self.strides:
                p = self.heads[str(stride)](h)
                b, _, gh, gw = p.shape
                outs.append(p.view(b, len(self.anchors(stride)), 5 + self.num_classes, gh, gw))
        return outs


class YoloV1Head(nn.Module):
    """YOLOv1's output for B7: a 7x7 grid, B boxes per cell, one class distribution per cell, from a fully
    connected layer over the last feature map (the 448 x 448 input of the paper, on a reduced backbone)."""

    def __init__(self, num_classes: int = 80, boxes: int = 2, width: int = 16, grid: int = 7):
        super().__init__()
        self.grid, self.depth = grid, boxes * 5 + num_classes
        self.backbone = nn.Sequential(
            *(_block(3 if i == 0 else width, width) for i in range(6)), nn.AdaptiveAvgPool2d(grid)
        )
        self.fc = nn.Linear(width * grid * grid, grid * grid * self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x).flatten(1)).view(-1, self.grid, self.grid, self.depth)
