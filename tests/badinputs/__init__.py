"""A generated corpus of broken inputs: slides, labels tables and feature files.

``make_corpus(folder)`` writes every case under ``folder/slides``, ``folder/labels`` and
``folder/features`` and returns one :class:`BadInput` per file, each saying which library
call it targets and which :mod:`wsi.errors` class (and message fragments) that call must
raise. Everything is small (the whole corpus is well under 5 MB) and written in a few
seconds; the "too large" slides declare 200 000 x 200 000 px and hold almost nothing.

Cases that the running user makes meaningless (``chmod 000`` does not stop root) are
returned with ``skip`` set and no file on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import imagecodecs
import numpy as np
import tifffile

from wsi.errors import (
    FeatureFileError,
    InvalidMppError,
    LabelsError,
    MissingMppError,
    SlideNotFoundError,
    SlideOpenError,
    SlideReadError,
    SlideTooSmallError,
    WsiError,
)
from wsi.store.h5 import FeatureWriter
from wsi.synthetic.slides import Region, write_slide

__all__ = [
    "GOOD_SLIDE",
    "HUGE_SIDE_PX",
    "BadInput",
    "jpeg_tile_spans",
    "make_corpus",
    "write_good_slide",
    "write_sparse_slide",
]

Api = Literal["slide", "labels", "features"]

HUGE_SIDE_PX = 200_000
"""Side of the "too large" slides: 200 000² px is 120 GB of RGB at level 0."""

GOOD_SLIDE = {"width": 1024, "height": 768, "mpp": 0.5, "tissue": (256, 128, 512, 384)}
"""The base slide the slide cases are made from: level-0 px, µm/px, tissue box x, y, w, h."""

_FEATURE_DIM = 16
_FEATURE_ROWS = 40
_COORDS_ATTRS = {"patch_size": 224, "patch_level": 0, "downsample": [1.0, 1.0], "name": "s"}
_FIX_EMBED = "wsi embed"


@dataclass(frozen=True)
class BadInput:
    """One broken input and what the library must do with it.

    Attributes:
        path: the file (or directory, or link) written.
        kind: the kind of damage (several files may share a kind, e.g. truncation offsets).
        api: what reads it: ``"slide"`` (open_slide / tile / reads), ``"labels"``
            (read_labels) or ``"features"`` (FeatureBag / read_tile_file).
        error: the exact :mod:`wsi.errors` class raised; None when the input is odd but
            valid and must be read correctly.
        message: fragments the error message must contain (the file's name and the fix).
        note: what is wrong with it, in a few words.
        cli_status: the ``wsi tile`` manifest status of a slide case.
        skip: why the case cannot be checked here (then no file was written).
    """

    path: Path
    kind: str
    api: Api
    error: type[WsiError] | None
    message: tuple[str, ...]
    note: str
    cli_status: str = "failed"
    skip: str = ""

    @property
    def name(self) -> str:
        """The file name as the messages print it (undecodable bytes as ``\\xNN``)."""
        return os.fsencode(self.path.name).decode("utf-8", "backslashreplace")


def write_good_slide(
    path: Path, *, flavour: Literal["tiff", "svs"] = "tiff", associated_images: bool = False
) -> Path:
    """A valid 1024 x 768 px, 0.5 µm/px slide with one tissue block (two levels, 256-px
    tiles); an SVS may carry label and macro images."""
    x, y, w, h = GOOD_SLIDE["tissue"]
    return write_slide(
        path,
        width=GOOD_SLIDE["width"],
        height=GOOD_SLIDE["height"],
        mpp=GOOD_SLIDE["mpp"],
        regions=[Region(x, y, w, h, texture=10.0)],
        flavour=flavour,
        downsamples=(1, 4),
        associated_images=associated_images,
    )


def jpeg_tile_spans(path: Path) -> list[tuple[int, int]]:
    """``(offset, bytecount)`` of every non-empty JPEG tile of every tiled page of a TIFF."""
    spans = []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            if page.is_tiled:
                spans += [
                    (int(o), int(n))
                    for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)
                    if n
                ]
    return spans


def make_corpus(folder: str | os.PathLike[str]) -> list[BadInput]:
    """Write the corpus under ``folder`` and return its cases (see the module docstring)."""
    root = Path(folder)
    cases: list[BadInput] = []
    for sub, maker in (
        ("slides", _slide_cases),
        ("labels", _labels_cases),
        ("features", _feature_cases),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        cases += list(maker(root / sub))
    return cases


# --------------------------------------------------------------------------- slides


def _slide_cases(d: Path) -> Iterator[BadInput]:
    base = write_good_slide(d.parent / ".base.tiff")
    data = base.read_bytes()
    spans = jpeg_tile_spans(base)
    first_tile = min(o for o, _ in spans)
    yield from _truncated(d, data, first_tile, spans)

    p = d / "random-bytes.svs"
    p.write_bytes(np.random.default_rng(8).bytes(20_000))
    yield BadInput(
        p,
        "random-bytes",
        "slide",
        SlideOpenError,
        (p.name, "check the file is a complete slide"),
        "20 kB of random bytes",
    )

    p = d / "zero-size.svs"
    p.write_bytes(b"")
    yield BadInput(
        p, "zero-size", "slide", SlideOpenError, (p.name, "empty file", "copy"), "0 bytes"
    )

    p = d / "corrupt-jpeg-tiles.tiff"
    broken = bytearray(data)
    rng = np.random.default_rng(4)
    for offset, count in spans:  # keep SOI and EOI, scramble the entropy-coded middle
        middle = slice(offset + count // 2, offset + count - 2)
        broken[middle] = rng.bytes(middle.stop - middle.start)
    p.write_bytes(bytes(broken))
    yield BadInput(
        p,
        "corrupt-jpeg-tiles",
        "slide",
        SlideReadError,
        (p.name, "cannot decode", "re-"),
        "every JPEG tile's data scrambled",
    )

    p = _write_tiled_tiff(d / "wrong-size-level.tiff", [(1024, 768), (400, 100)], mpp=0.5)
    yield BadInput(
        p,
        "wrong-size-level",
        "slide",
        SlideOpenError,
        (p.name, "level 1 is 400x100", "re-export"),
        "level 1 is 400x100 px under a 1024x768 level 0",
    )

    yield from _absurd_mpp(d)

    p = write_sparse_slide(
        d / "too-large-level.tiff", HUGE_SIDE_PX, HUGE_SIDE_PX, downsamples=(1, 32, 256)
    )
    yield BadInput(
        p,
        "too-large-level",
        "slide",
        None,
        (),
        f"{HUGE_SIDE_PX}² px declared (120 GB RGB), empty tiles, 78 kB on disk",
        cli_status="no_tissue",
    )

    p = write_sparse_slide(d / "too-large-no-pyramid.tiff", HUGE_SIDE_PX, HUGE_SIDE_PX)
    yield BadInput(
        p,
        "too-large-no-pyramid",
        "slide",
        SlideReadError,
        (p.name, "no coarser pyramid level", "--pyramid"),
        f"one {HUGE_SIDE_PX}² px level: a thumbnail would decode 40 Gpx",
    )

    p = d / "too-large-flat.tif"
    p.write_bytes(_lying_strip_tiff(HUGE_SIDE_PX, HUGE_SIDE_PX))
    yield BadInput(
        p,
        "too-large-flat",
        "slide",
        SlideOpenError,
        (p.name, "too large to decode whole", "pyramidal"),
        f"a flat (stripped) {HUGE_SIDE_PX}² px image header",
    )

    p = d / "tiny.tiff"
    write_slide(p, width=100, height=80, mpp=0.5, downsamples=(1,))
    yield BadInput(
        p,
        "smaller-than-a-tile",
        "slide",
        SlideTooSmallError,
        (p.name, "smaller --size"),
        "100x80 px at 0.5 µm/px, tiles are 224 px",
    )

    p = write_slide(d / "no-mpp.tiff", width=1024, height=768, mpp=None, downsamples=(1, 4))
    yield BadInput(
        p,
        "missing-mpp",
        "slide",
        MissingMppError,
        (p.name, "--slide-mpp"),
        "no MPP, resolution or objective power",
    )

    yield _unreadable(d, data)

    p = d / "symlink-loop.svs"
    try:
        os.symlink(p.name, p)
    except OSError as exc:
        yield BadInput(
            p,
            "symlink-loop",
            "slide",
            SlideNotFoundError,
            (),
            "a link to itself",
            skip=f"cannot make symbolic links here ({exc.strerror})",
        )
    else:
        yield BadInput(
            p,
            "symlink-loop",
            "slide",
            SlideNotFoundError,
            (p.name, "symbolic link loop", "fix or remove the link"),
            "a symbolic link to itself",
        )

    p = d / "folder.svs"
    p.mkdir()
    yield BadInput(
        p,
        "directory-named-slide",
        "slide",
        SlideNotFoundError,
        (p.name, "is a directory", "pass the files inside it"),
        "a directory named like a slide",
    )

    yield _non_utf8(d, data)
    base.unlink()


def _truncated(
    d: Path, data: bytes, first_tile: int, spans: list[tuple[int, int]]
) -> Iterator[BadInput]:
    """The base TIFF cut at offsets that break different structures."""
    last_offset, last_count = max(spans)
    offsets = {
        "header": 8,  # the 8-byte header only
        "first-ifd": first_tile // 2,  # inside the first directory / its tile tables
        "first-tiles": first_tile + 3000,  # a few level-0 tiles present
        "half": len(data) // 2,
        "last-tile": last_offset + last_count // 2,  # only the very last tile is cut
    }
    for label, offset in offsets.items():
        p = d / f"truncated-{label}.tiff"
        p.write_bytes(data[:offset])
        yield BadInput(
            p,
            "truncated-tiff",
            "slide",
            SlideOpenError,
            (p.name, "re-copy"),
            f"cut at byte {offset} of {len(data)}",
        )


def _absurd_mpp(d: Path) -> Iterator[BadInput]:
    """Aperio slides whose ``MPP`` field says 0, 1e6 or nan (same length as ``0.5``)."""
    svs = write_good_slide(d.parent / ".base.svs", flavour="svs")
    data = svs.read_bytes()
    assert data.count(b"MPP = 0.5|") >= 2
    for label, value in (("zero", b"0.0"), ("1e6", b"1e6"), ("nan", b"nan")):
        p = d / f"mpp-{label}.svs"
        p.write_bytes(data.replace(b"MPP = 0.5|", b"MPP = " + value + b"|"))
        yield BadInput(
            p,
            "absurd-mpp",
            "slide",
            InvalidMppError,
            (p.name, "not a plausible slide scale", "--slide-mpp"),
            f"Aperio MPP = {value.decode()}",
        )
    svs.unlink()
    p = write_slide(d / "mpp-tiny.tiff", width=1024, height=768, mpp=1e-5, downsamples=(1, 4))
    yield BadInput(
        p,
        "absurd-mpp",
        "slide",
        InvalidMppError,
        (p.name, "not a plausible slide scale", "--slide-mpp"),
        "TIFF resolution of 10^9 px/cm (1e-5 µm/px)",
    )


def _unreadable(d: Path, data: bytes) -> BadInput:
    p = d / "no-permission.tiff"
    p.write_bytes(data)
    p.chmod(0)
    try:
        with open(p, "rb") as f:
            f.read(1)
    except PermissionError:
        return BadInput(
            p,
            "no-permission",
            "slide",
            SlideOpenError,
            (p.name, "permission denied", "chmod"),
            "mode 000",
        )
    p.chmod(0o600)
    p.unlink()
    return BadInput(
        p,
        "no-permission",
        "slide",
        SlideOpenError,
        (),
        "mode 000",
        skip="chmod 000 does not stop this user (root) from reading",
    )


def _non_utf8(d: Path, data: bytes) -> BadInput:
    raw = os.fsencode(d) + b"/caf\xe9-latin1.tiff"
    try:
        with open(raw, "wb") as f:
            f.write(data)
    except OSError as exc:
        return BadInput(
            Path(os.fsdecode(raw)),
            "non-utf8-name",
            "slide",
            SlideOpenError,
            (),
            "a Latin-1 file name",
            skip=f"the file system refuses it ({exc})",
        )
    return BadInput(
        Path(os.fsdecode(raw)),
        "non-utf8-name",
        "slide",
        SlideOpenError,
        ("caf\\xe9-latin1.tiff", "not valid UTF-8", "rename"),
        "file name bytes caf\\xe9 (Latin-1), a valid slide inside",
    )


def _jpeg_tiles(rgb: np.ndarray, tile: int) -> Iterator[bytes]:
    height, width = rgb.shape[:2]
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.full((tile, tile, 3), 240, np.uint8)
            part = rgb[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield imagecodecs.jpeg8_encode(block, level=90)


def _write_tiled_tiff(path: Path, sizes: list[tuple[int, int]], mpp: float) -> Path:
    """A generic pyramidal JPEG TIFF whose levels have exactly ``sizes`` (width, height)."""
    w0 = sizes[0][0]
    with tifffile.TiffWriter(path) as tif:
        for i, (w, h) in enumerate(sizes):
            rgb = np.full((h, w, 3), 240, np.uint8)
            rgb[h // 4 : h // 2, w // 4 : w // 2] = (200, 110, 170)
            per_cm = 10_000 / mpp * w / w0
            tif.write(
                _jpeg_tiles(rgb, 256),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                subfiletype=int(i > 0),
                resolution=(per_cm, per_cm),
                resolutionunit=3,
                metadata=None,
            )
    return path


def _lying_strip_tiff(width: int, height: int) -> bytes:
    """A little-endian TIFF declaring one uncompressed RGB strip of ``width`` x ``height``
    px whose byte count says 3 bytes: the header lies about what the file holds."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, 0),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 0),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, 3),
        (284, 3, 1, 1),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at, pixels_at = 8 + ifd_size, 8 + ifd_size + 6
    out = bytearray(b"II*\x00" + (8).to_bytes(4, "little") + len(entries).to_bytes(2, "little"))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 273: pixels_at}.get(tag, value)
        packed = (
            value.to_bytes(2, "little") + b"\x00\x00"
            if kind == 3 and count == 1
            else value.to_bytes(4, "little")
        )
        out += tag.to_bytes(2, "little") + kind.to_bytes(2, "little")
        out += count.to_bytes(4, "little") + packed
    out += b"\x00" * 4 + b"\x08\x00" * 3 + b"\xff\xf0\xe0"
    return bytes(out)


def write_sparse_slide(
    path: Path,
    width: int,
    height: int,
    *,
    downsamples: tuple[int, ...] = (1,),
    tile: int = 2048,
    mpp: float = 0.25,
    filled: dict[tuple[int, int], tuple[int, int, int]] | None = None,
) -> Path:
    """A generic pyramidal JPEG TIFF whose tiles are empty (no bytes: openslide paints them
    transparent, read as white) except level-0 tiles ``filled`` as ``{(col, row): rgb}``:
    a huge declared slide in a few kB."""
    filled = filled or {}
    with tifffile.TiffWriter(path) as tif:
        for i, ds in enumerate(downsamples):
            w, h = -(-width // ds), -(-height // ds)
            across, down = -(-w // tile), -(-h // tile)
            tiles = [
                imagecodecs.jpeg8_encode(np.full((tile, tile, 3), filled[col, row], np.uint8))
                if i == 0 and (col, row) in filled
                else b""
                for row in range(down)
                for col in range(across)
            ]
            per_cm = 10_000 / mpp / ds
            tif.write(
                iter(tiles),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                subsampling=(2, 2),
                subfiletype=int(i > 0),
                resolution=(per_cm, per_cm),
                resolutionunit=3,
                metadata=None,
            )
    return path


# --------------------------------------------------------------------------- labels

_LABELS: dict[str, tuple[bytes, type[WsiError] | None, tuple[str, ...], str]] = {
    "duplicate-conflict.csv": (
        b"slide_id,type\ns1,tumour\ns2,normal\ns1,normal\n",
        LabelsError,
        ("s1", "lines 2 and 4", "keep one row per slide"),
        "s1 is tumour on line 2 and normal on line 4",
    ),
    "bom-repeated-header.csv": (
        b"\xef\xbb\xbfslide_id,type\ns1,tumour\n\xef\xbb\xbfslide_id,type\ns2,normal\n",
        LabelsError,
        ("line 3 repeats the header", "keep one header line"),
        "two BOM'd exports joined with cat",
    ),
    "semicolon-mixed.csv": (
        b"slide_id;type\ns1;tumour\ns2,normal\n",
        LabelsError,
        ("line 3", "','", "separator ';'"),
        "a ; file with one , line",
    ),
    "extra-field.csv": (
        b"slide_id,type\ns1,tumour,x\ns2,normal\n",
        LabelsError,
        ("line 2 has 3 fields", "the header has 2"),
        "a row with more fields than the header",
    ),
    "duplicate-column.csv": (
        b"slide_id,type,type\ns1,tumour,normal\n",
        LabelsError,
        ("column 'type'", "columns 2 and 3", "rename"),
        "two columns named type",
    ),
    "latin1.csv": (
        b"slide_id,site\ns1,colon\ns2,tum\xf6r\n",
        LabelsError,
        ("not UTF-8", "line 3", "save the CSV as UTF-8"),
        "Latin-1 bytes on line 3",
    ),
    "no-slide-id.csv": (
        b"Slide ID,type\ns1,tumour\n",
        LabelsError,
        ("no 'slide_id' column", "did you mean 'Slide ID'"),
        "the id column is named 'Slide ID'",
    ),
    "bom.csv": (
        b"\xef\xbb\xbfslide_id,type\ns1,tumour\ns2,normal\n",
        None,
        (),
        "a UTF-8 BOM (Excel 'CSV UTF-8'): read as usual",
    ),
    "semicolon-decimal-comma.csv": (
        b"slide_id;type;score\ns1;tumour;0,5\ns2;normal;1,25\n",
        None,
        (),
        "; separators and decimal commas (European Excel): read as usual",
    ),
    "utf16-tab.csv": (
        "slide_id\ttype\ns1\ttumour\ns2\tnormal\n".encode("utf-16"),
        None,
        (),
        "UTF-16 with a BOM, TAB-separated (Excel 'Unicode text'): read as usual",
    ),
}


def _labels_cases(d: Path) -> Iterator[BadInput]:
    for name, (data, error, message, note) in _LABELS.items():
        p = d / name
        p.write_bytes(data)
        fragments = (name, *message) if error is not None else ()
        yield BadInput(p, "labels-" + name.removesuffix(".csv"), "labels", error, fragments, note)


# --------------------------------------------------------------------------- features


def _write_features(path: Path, rows: np.ndarray) -> Path:
    coords = np.stack([np.arange(len(rows)) * 224, np.zeros(len(rows))], axis=1)
    with FeatureWriter(
        path, coords, _COORDS_ATTRS, {"library": "wsi"}, rows.shape[1], {"encoder": "enc"}
    ) as writer:
        writer.write(0, rows)
        writer.commit()
    return path


def _write_datasets(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
            if name == "features":
                f[name].attrs["encoder"] = "enc"
    return path


def _feature_cases(d: Path) -> Iterator[BadInput]:
    rng = np.random.default_rng(0)
    good = rng.normal(size=(_FEATURE_ROWS, _FEATURE_DIM)).astype(np.float32)
    data = _write_features(d.parent / ".base.h5", good).read_bytes()
    (d.parent / ".base.h5").unlink()
    for label, offset in (
        ("header", 8),
        ("metadata", 1000),
        ("half", len(data) // 2),
        ("last-bytes", len(data) - 100),
    ):
        p = d / f"truncated-{label}.h5"
        p.write_bytes(data[:offset])
        yield BadInput(
            p,
            "features-truncated",
            "features",
            FeatureFileError,
            (p.name, "truncated or corrupt", _FIX_EMBED),
            f"cut at byte {offset} of {len(data)}",
        )

    p = d / "not-hdf5.h5"
    p.write_text("slide_id,feature\n")
    yield BadInput(
        p,
        "features-not-hdf5",
        "features",
        FeatureFileError,
        (p.name, _FIX_EMBED),
        "a text file named .h5",
    )

    coords = np.stack([np.arange(10) * 224, np.zeros(10)], axis=1).astype(np.int64)
    shapes = {
        "rows-mismatch.h5": (
            {"coords": coords, "features": np.zeros((12, 16), np.float32)},
            "12 feature rows for 10 coords",
        ),
        "features-1d.h5": (
            {"coords": coords, "features": np.zeros(10, np.float32)},
            "features of shape (10,)",
        ),
        "coords-3-columns.h5": (
            {"coords": np.zeros((10, 3), np.int64), "features": np.zeros((10, 16), np.float32)},
            "coords of shape (10, 3)",
        ),
        "zero-width.h5": (
            {"coords": coords, "features": np.zeros((10, 0), np.float32)},
            "features of shape (10, 0)",
        ),
        "text-features.h5": (
            {"coords": coords, "features": np.array([b"x" * 8] * 10)},
            "features stored as strings",
        ),
    }
    for name, (datasets, note) in shapes.items():
        p = _write_datasets(d / name, **datasets)
        yield BadInput(
            p,
            "features-wrong-shape",
            "features",
            FeatureFileError,
            (p.name, "shape" if "text" not in name else "numbers", _FIX_EMBED),
            note,
        )

    p = _write_datasets(d / "coords-only.h5", coords=coords)
    yield BadInput(
        p,
        "features-missing-dataset",
        "features",
        FeatureFileError,
        (p.name, "no 'features' dataset", "patches/"),
        "a coords file (wsi tile output) among feature files",
    )

    bad = good.copy()
    bad[3, 5] = np.nan
    p = _write_features(d / "nan-row.h5", bad)
    yield BadInput(
        p,
        "features-not-finite",
        "features",
        FeatureFileError,
        (p.name, "NaN or infinite", "row 3", _FIX_EMBED),
        "one NaN in row 3",
    )
