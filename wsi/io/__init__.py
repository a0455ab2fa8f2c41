"""Reading slides: openslide, the fast JPEG-TIFF reader, flat-image and DICOM fallbacks, mpp.

Nothing here imports :mod:`wsi.store`, :mod:`wsi.pipeline` or :mod:`wsi.viz`.
"""
