"""Macenko H&E stain normalisation in batched torch: fitted once per slide, applied per batch.

Macenko et al., ISBI 2009: optical density (OD) of tissue pixels, the plane of its two main
directions, the extreme angles in that plane as the haematoxylin and eosin vectors, and the
99th percentile of each stain's concentration. A tile is normalised by unmixing it with the
*slide's* stain vectors and remixing with reference vectors and concentrations.

Hand-written (torchstain fits and normalises one image at a time in numpy or torch; here the
fit is per slide and the batch of tiles goes through one matrix product on the encoder's
device); pinned to torchstain's ``NumpyMacenkoNormalizer`` in ``tests/test_stain.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LIGHT_INTENSITY = 240.0
"""Transmitted light intensity ``Io`` (grey level of empty glass)."""
OD_THRESHOLD = 0.15
"""Pixels with an optical density below this in any channel are background (``beta``)."""
ANGLE_PERCENTILE = 1.0
"""Robust extremes of the stain angles (``alpha``, percent)."""
MAX_FIT_PIXELS = 1 << 20
"""Pixels a fit uses at most (an even subsample beyond), which bounds its cost."""

REFERENCE_STAIN = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
"""The reference H and E OD vectors (columns), Macenko's usual values."""
REFERENCE_MAX_CONCENTRATION = (1.9705, 1.0308)


@dataclass(frozen=True)
class StainFit:
    """A slide's stain vectors (OD per RGB channel, H then E) and 99th-percentile
    concentrations."""

    stain_matrix: tuple[tuple[float, float], ...]
    """3 x 2: rows R, G, B; columns haematoxylin, eosin."""
    max_concentration: tuple[float, float]
    pixels: int
    """Tissue pixels the fit used."""

    def __repr__(self) -> str:
        h = ", ".join(f"{r[0]:.3f}" for r in self.stain_matrix)
        e = ", ".join(f"{r[1]:.3f}" for r in self.stain_matrix)
        return f"StainFit(H=({h}), E=({e}), max C={self.max_concentration}, {self.pixels} px)"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (for provenance)."""
        return {
            "method": "macenko",
            "stain_matrix": [list(r) for r in self.stain_matrix],
            "max_concentration": list(self.max_concentration),
            "pixels": self.pixels,
        }


REFERENCE = StainFit(REFERENCE_STAIN, REFERENCE_MAX_CONCENTRATION, 0)
"""The target every slide is normalised to."""


def fit_macenko(tiles: np.ndarray | torch.Tensor) -> StainFit:
    """Fit stain vectors and concentrations to uint8 RGB pixels ``(..., 3)`` (e.g. a batch
    of tissue tiles ``(B, H, W, 3)``). Raises ``ValueError`` when fewer than 100 pixels are
    stained (a blank input)."""
    pixels = (
        tiles.reshape(-1, 3).cpu().numpy()
        if isinstance(tiles, torch.Tensor)
        else (np.asarray(tiles).reshape(-1, 3))
    )
    step = max(1, -(-pixels.shape[0] // MAX_FIT_PIXELS))
    rgb = torch.from_numpy(np.array(pixels[::step]))  # a writable copy
    od = _optical_density(rgb.double())
    tissue = od[~(od < OD_THRESHOLD).any(dim=1)]
    if tissue.shape[0] < 100:
        raise ValueError(
            f"only {tissue.shape[0]} stained pixels to fit stain vectors to; fit on tissue tiles"
        )
    _, vectors = torch.linalg.eigh(torch.cov(tissue.T))
    plane = vectors[:, 1:3]
    if plane[:, 1].sum() < 0:  # the main direction points into positive OD: angles stay
        plane = plane * torch.tensor([1.0, -1.0], dtype=plane.dtype)  # off the ±π seam
    projected = tissue @ plane
    phi = torch.atan2(projected[:, 1], projected[:, 0])
    lo = torch.quantile(phi, ANGLE_PERCENTILE / 100)
    hi = torch.quantile(phi, 1 - ANGLE_PERCENTILE / 100)
    v_lo = plane @ torch.stack([torch.cos(lo), torch.sin(lo)])
    v_hi = plane @ torch.stack([torch.cos(hi), torch.sin(hi)])
    he = torch.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], dim=1)
    concentration = torch.linalg.lstsq(he, od.T).solution
    max_c = torch.quantile(concentration, 0.99, dim=1)
    return StainFit(
        tuple(tuple(float(v) for v in row) for row in he),
        (float(max_c[0]), float(max_c[1])),
        int(tissue.shape[0]),
    )


def normalise_macenko(
    tiles: torch.Tensor, source: StainFit, target: StainFit = REFERENCE
) -> torch.Tensor:
    """uint8 RGB tiles ``(B, H, W, 3)`` (any device) unmixed with ``source``'s stains and
    remixed with ``target``'s: uint8, same shape and device."""
    device = tiles.device
    he = torch.tensor(source.stain_matrix, dtype=torch.float64)
    scale = torch.tensor(target.max_concentration, dtype=torch.float64) / torch.tensor(
        source.max_concentration, dtype=torch.float64
    )
    # OD -> concentrations (least squares: the pseudo-inverse) -> rescaled -> target OD
    mix = torch.tensor(target.stain_matrix, dtype=torch.float64) @ (
        scale[:, None] * torch.linalg.pinv(he)
    )
    od = _optical_density(tiles.reshape(-1, 3).float())
    out = LIGHT_INTENSITY * torch.exp(-(od @ mix.T.float().to(device)))
    return out.clamp_(max=255).to(torch.uint8).reshape(tiles.shape)


def _optical_density(rgb: torch.Tensor) -> torch.Tensor:
    return -torch.log((rgb + 1) / LIGHT_INTENSITY)
