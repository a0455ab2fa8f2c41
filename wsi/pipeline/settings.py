"""What a batch embedding run is asked to do, in one frozen object: :class:`EmbedSettings`.

The local runner, the Ray runner and the per-slide step (:func:`wsi.pipeline.slide_step.
embed_slide`) all read it; ``embed_archive``'s keywords build one. The provenance keys that
decide whether a slide's files can be reused (:func:`tile_key`, :meth:`EmbedSettings.
embed_key`) live here too, so every runner skips the same slides.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.defaults import DEFAULT_ENCODER
from wsi.errors import InvalidParameterError
from wsi.options import TileOptions

if TYPE_CHECKING:  # models.encoders imports torch: loaded when an encoder is needed
    import torch

    from models.encoders import Encoder

"""The encoder of ``wsi embed`` and ``embed_archive`` when none is named."""


def encoder_dirname(name: str) -> str:
    """The folder name of an encoder's features: ``timm:resnet18`` → ``timm-resnet18``."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-")


def resolve_encoder(
    encoder: str | Encoder,
    weights: str | os.PathLike[str] | None,
    device: str | None,
    precision: str,
) -> Encoder:
    """An ``Encoder`` object as it is, or a name loaded with ``models.load_encoder``."""
    from models.encoders import Encoder, load_encoder

    if isinstance(encoder, Encoder):
        return encoder
    return load_encoder(encoder, weights=weights, device=device, precision=precision)


def tile_key(
    path: str | os.PathLike[str], tiling: TileOptions, slide_quickhash: str | None = None
) -> dict[str, Any]:
    """What decides a slide's tiles (``patches/{id}.h5``): its quickhash (``slide_quickhash``:
    when already computed) and the tiling options (tissue options included). Unchanged →
    the file is reused."""
    from wsi.io.slide import quickhash  # openslide loads with the first slide, not --help

    return {"slide_quickhash": slide_quickhash or quickhash(path), "tiling": asdict(tiling)}


@dataclass(frozen=True, repr=False)
class EmbedSettings:
    """Everything a batch embedding run needs besides the slides and the output folder.

    Attributes:
        tiling: tile scale (µm/px), size (px), overlap (px), minimum tissue fraction,
            slide mpp override and the tissue-detection options.
        encoder: an encoder name (see ``models.load_encoder``) or an ``Encoder`` object.
        weights: a weights file for a named encoder (None: its default weights).
        batch_size: tiles per encoder batch.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or None (the best available).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        workers: patch-reader processes (None: a default for the encoder's device,
            :func:`wsi.pipeline.loader.default_workers`; 0 reads in-process).
        lanes: encoding lanes for a CPU encoder: processes that each read and encode whole
            batches with a share of the torch threads (None: 2 for a light encoder on a CPU
            unless ``workers`` or ``stain`` is set, see
            :func:`wsi.pipeline.loader.encoding_lanes`; 0 encodes in the main process).
        skip_done: reuse slides whose feature file has the same provenance key.
        max_failed_fraction: a slide with more undecodable tiles than this fraction fails.
        progress: show progress bars.
        debug: print the traceback of a failed slide.
        stain: ``"macenko"`` to normalise each slide's H&E stains (fitted once per slide on
            its first batch of tissue tiles, :mod:`models.stain`) before encoding; None (the
            default) leaves pixels as scanned. Part of the reuse key and the provenance.
    """

    tiling: TileOptions = field(default_factory=TileOptions)
    encoder: str | Encoder = DEFAULT_ENCODER
    weights: str | os.PathLike[str] | None = None
    batch_size: int = 64
    device: str | None = None
    precision: str = "auto"
    workers: int | None = None
    lanes: int | None = None
    skip_done: bool = True
    max_failed_fraction: float = 0.05
    progress: bool = True
    debug: bool = False
    stain: str | None = None

    def __repr__(self) -> str:
        t = self.tiling
        return (
            f"EmbedSettings(encoder={self.encoder_name!r}, tiles {t.size} px at {t.mpp:g} µm/px, "
            f"batch {self.batch_size}, device {self.device or 'auto'}, "
            f"workers {'auto' if self.workers is None else self.workers}, "
            f"lanes {'auto' if self.lanes is None else self.lanes}, "
            f"{'skip done' if self.skip_done else 'redo'})"
        )

    def check(self) -> None:
        """Raise :class:`InvalidParameterError` for values out of range (not the encoder)."""
        self.tiling.check()
        if self.stain not in (None, "macenko"):
            raise InvalidParameterError(
                f"stain normalisation must be None or 'macenko', got {self.stain!r}"
            )
        if self.lanes is not None and not (isinstance(self.lanes, int) and self.lanes >= 0):
            raise InvalidParameterError(f"lanes must be an integer ≥ 0, got {self.lanes!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise InvalidParameterError(
                f"batch size must be a positive integer, got {self.batch_size!r}"
            )
        if not self.max_failed_fraction >= 0.0:
            raise InvalidParameterError(
                f"max_failed_fraction must be ≥ 0, got {self.max_failed_fraction!r}"
            )

    def check_encoder(self) -> None:
        """Fail fast on an unknown encoder name, without building the model."""
        if not isinstance(self.encoder, str):
            return
        from models.encoders import known_encoders, load_encoder

        if self.encoder in known_encoders() or self.encoder.startswith(("timm:", "hf-hub:")):
            return
        load_encoder(self.encoder)  # raises UnknownEncoderError listing the known names

    @property
    def encoder_name(self) -> str:
        """The encoder's name (an ``Encoder`` object's ``name``)."""
        return self.encoder if isinstance(self.encoder, str) else self.encoder.name

    def expected_feature_dim(self) -> int | None:
        """The width the encoder writes, known without loading it (an ``Encoder`` object or a
        foundation preset), else None. A stored file of another width is embedded again: a
        preset whose output changed (CONCH: 768-d token → 512-d image embedding) keeps its
        name and weights."""
        if not isinstance(self.encoder, str):
            return int(self.encoder.feature_dim)
        from models.foundation import PRESETS

        preset = PRESETS.get(self.encoder)
        return None if preset is None else int(preset.feature_dim)

    def features_dir(self, out_dir: str | os.PathLike[str]) -> Path:
        """``out_dir/features/{encoder}``."""
        return Path(out_dir) / "features" / encoder_dirname(self.encoder_name)

    def features_path(self, out_dir: str | os.PathLike[str], slide_id: str) -> Path:
        """``out_dir/features/{encoder}/{slide_id}.h5``."""
        return self.features_dir(out_dir) / f"{slide_id}.h5"

    def weights_key(self) -> Any:
        """The weights' part of the provenance key: path and quickhash of a file."""
        if self.weights is None:
            return None
        if Path(self.weights).is_file():
            from wsi.io.slide import quickhash

            return {"path": str(Path(self.weights).resolve()), "quickhash": quickhash(self.weights)}
        return str(self.weights)

    def embed_key(self, path: str | os.PathLike[str], weights_key: Any = None) -> dict[str, Any]:
        """What decides a slide's features: :func:`tile_key` + encoder + weights.
        Unchanged → the file is reused (``weights_key``: when already computed)."""
        return {
            **tile_key(path, self.tiling),
            "encoder": self.encoder_name,
            "weights": self.weights_key() if weights_key is None else weights_key,
            **({"stain": self.stain} if self.stain else {}),
        }

    def load_encoder(self) -> Encoder:
        """The ``Encoder`` to run: the object given, or the name loaded on ``device``."""
        return resolve_encoder(self.encoder, self.weights, self.device, self.precision)

    def encoder_device(self, loaded: Encoder | None = None) -> torch.device:
        """The ``torch.device`` the encoder runs on (``loaded``: an encoder already placed)."""
        from models.encoders import resolve_device

        return (
            getattr(loaded, "device", None)
            or getattr(self.encoder, "device", None)
            or resolve_device(self.device)
        )

    def reader_workers(self, loaded: Encoder | None = None) -> int:
        """Patch-reader processes: ``workers``, or the default for the encoder's device."""
        from wsi.pipeline.loader import default_workers

        if self.workers is not None:
            return self.workers
        return default_workers(self.encoder_device(loaded).type)

    def may_use_lanes(self, loaded: Encoder | None = None) -> bool:
        """Whether encoding lanes could apply, before the encoder is loaded: lanes asked
        for, or left to the default for a CPU encoder without reader processes or stains."""
        if self.lanes is not None:
            return self.lanes != 0
        cpu = self.encoder_device(loaded).type == "cpu"
        return cpu and self.workers is None and not self.stain

    def encoding_lanes(self, encoder: Encoder) -> int:
        """Encoding lanes for the loaded ``encoder`` (0: encode in the main process); see
        :func:`wsi.pipeline.loader.encoding_lanes`."""
        from wsi.pipeline.loader import encoding_lanes

        return encoding_lanes(self.lanes, self.workers, encoder, stain=bool(self.stain))
