"""Architecture calculator: per-layer shapes, parameters, MACs/FLOPs, memory and receptive fields.

`analyze(model, (C, H, W))` walks any nn.Module's torch.fx graph in eval mode (`train=True`: the training
graph), a bare nn.LSTM/GRU/RNN included (input (T, F)), and falls back to forward hooks on the leaf
modules when the model cannot be traced; `parse_spec("3x128x128 | conv 5 s2 p2 64 relu | ...")` builds a
textbook network with closed forms; `check_spec` compares the two.
"""

from torchdojo.calc.graph import Analysis, Layer, analyze, trace
from torchdojo.calc.rules import CONVENTIONS
from torchdojo.calc.spec import Spec, parse_spec
from torchdojo.calc.speccheck import check_spec

__all__ = ["CONVENTIONS", "Analysis", "Layer", "Spec", "analyze", "check_spec", "parse_spec", "trace"]
