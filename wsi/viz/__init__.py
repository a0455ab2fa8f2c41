"""Pictures and drawings: QC thumbnails, attention heatmaps, GeoJSON for QuPath."""
