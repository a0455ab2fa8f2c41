"""Tumour micro-environment (TME) from tiles.

Nuclei and lymphocyte-like cells from a tile's pixels (:mod:`wsi.tme.nuclei`)::

    from wsi.tme import detect_nuclei, nuclei_summary
    nuclei = detect_nuclei(rgb, mpp=0.5)   # x, y (px in rgb), area_um2, lymphocyte
    nuclei_summary(nuclei, area_mm2=rgb.shape[0] * rgb.shape[1] * 0.5**2 / 1e6)

Importing this package costs numpy and pandas only; scikit-image and scipy load on the
first detection.
"""

from wsi.tme.nuclei import NucleusParams, detect_nuclei, nuclei_summary

__all__ = ["NucleusParams", "detect_nuclei", "nuclei_summary"]
