"""Layers written by hand (no torch.nn maths): convolution, transposed convolution, STE, Elman cell."""
