"""torchdojo: a deep-learning course's experiments as reproducible, verifiable software."""

__version__ = "0.1.0"
