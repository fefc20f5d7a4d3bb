"""Autoencoders (MISSION G1-G3): mirrored FC/conv autoencoders with inverse metrics, and a denoising text one."""

from torchdojo.autoencoders.mirrored import (
    Activation,
    DecoderLayer,
    EncoderLayer,
    MirroredAutoencoder,
    build_conv,
    build_fc,
    conv_output_padding,
)

__all__ = [
    "Activation",
    "DecoderLayer",
    "EncoderLayer",
    "MirroredAutoencoder",
    "build_conv",
    "build_fc",
    "conv_output_padding",
]
