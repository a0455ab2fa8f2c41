"""One slide into an output folder, under its lock: the step a Ray task runs, and that a
scheduler of your own (a SLURM array, Airflow) can call per slide.

    settings = EmbedSettings(encoder="efficientnet_lite0", tiling=TileOptions(mpp=0.5))
    row = embed_slide("slides/a.svs", "out/", settings)    # one task of a job array

It writes exactly the files of a local ``wsi embed`` run (``patches/``, ``qc/``,
``features/{encoder}/``) and returns the slide's manifest row without writing
``manifest.csv``: whoever runs the steps collects the rows (``Manifest(out / "manifest.csv")
.update(row)``; ``wsi embed`` over the same folder afterwards answers every finished slide
from its files). A slide already embedded with the same settings is answered from its
feature file; a slide another process holds is waited for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi.pipeline.batch import RowRecorder
from wsi.pipeline.local_runner import LocalRunner
from wsi.pipeline.plan import features_done_row
from wsi.pipeline.settings import EmbedSettings

if TYPE_CHECKING:
    from models.encoders import Encoder


def embed_slide(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: EmbedSettings | None = None,
    *,
    encoder: Encoder | None = None,
) -> dict[str, Any]:
    """Tile and embed one slide into ``out_dir`` under its lock; return its manifest row.

    ``encoder``: an ``Encoder`` already loaded and placed (kept across calls by a worker);
    None loads ``settings.encoder``, and only when the slide is not done yet. Stale
    temporaries of the folder are not swept (a run over the whole folder does that).
    """
    settings = settings or EmbedSettings()
    settings.check()
    done = features_done_row(Path(out_dir), Path(path), settings)
    if done is not None:  # answered from its file, without loading the encoder
        return done
    recorder = RowRecorder(None, 1, progress=False)
    try:
        LocalRunner(Path(out_dir), settings, recorder, encoder=encoder).run([(0, Path(path))])
    finally:
        recorder.close()
    return recorder.rows[0]
