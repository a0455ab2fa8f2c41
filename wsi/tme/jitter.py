"""Colour augmentation in HED space (Tellez et al., Med Image Anal 2019): each stain's optical
density is scaled and shifted at random, so a classifier trained on one lab's tiles copes with
another lab's staining. Colour deconvolution is scikit-image's (``rgb2hed``/``hed2rgb``)."""

from __future__ import annotations

import numpy as np


def hed_jitter(
    rgb: np.ndarray, *, scale: float = 0.05, shift: float = 0.01, rng: np.random.Generator
) -> np.ndarray:
    """A uint8 RGB ``(H, W, 3)`` tile whose haematoxylin, eosin and DAB densities are each
    multiplied by ``U(1 - scale, 1 + scale)`` and shifted by ``U(-shift, shift)`` (optical
    density units; H&E tiles have mean densities of about 0.03-0.04)."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    alpha = rng.uniform(1.0 - scale, 1.0 + scale, size=3)
    beta = rng.uniform(-shift, shift, size=3)
    out = hed2rgb(hed * alpha + beta)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
