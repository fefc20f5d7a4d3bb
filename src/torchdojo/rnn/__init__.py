"""Recurrent networks (MISSION F1-F4): cells, the sentence classifier with truncated BPTT, clipping."""

from torchdojo.rnn.cells import CELLS, LipschitzCell, ResetGateCell, build_cell, structured
from torchdojo.rnn.model import RNNClassifier, Trace
from torchdojo.rnn.train import clip_gradients, evaluate, position_gradients, train_classifier

__all__ = [
    "CELLS",
    "LipschitzCell",
    "RNNClassifier",
    "ResetGateCell",
    "Trace",
    "build_cell",
    "clip_gradients",
    "evaluate",
    "position_gradients",
    "structured",
    "train_classifier",
]
