"""Files on disk: HDF5 coords/features files (the only place h5py is used), the shared
output folder (temporary names, locks) and ``manifest.csv``.

Nothing here imports :mod:`wsi.pipeline`.
"""
