"""Autograder for hand-written layers: load any implementation and check it against PyTorch."""
