"""Layers written by hand (no torch.nn maths): convolution, transposed convolution, STE, Elman cell.

Short imports: `from torchdojo.nn import Conv2d, ConvTranspose2d, ElmanCell, Binarize, sign_ste, round_ste`
(and the functional `conv2d`, `conv_transpose2d`).
"""

from torchdojo.nn.conv import Conv2d, conv2d
from torchdojo.nn.conv_transpose import ConvTranspose2d, conv_transpose2d
from torchdojo.nn.elman import ElmanCell
from torchdojo.nn.ste import Binarize, round_ste, sign_ste

__all__ = ["Binarize", "Conv2d", "ConvTranspose2d", "ElmanCell", "conv2d", "conv_transpose2d", "round_ste", "sign_ste"]
