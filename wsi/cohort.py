"""A features folder + a labels table → bags for ``models``: one (N, D) float32 array per slide.

    cohort = load_cohort("out/features/efficientnet_lite0", "labels.csv", targets=["subtype"])
    print(cohort.report())
    models.training.train(cohort.bags, cohort.labels, classify=["subtype"])

Feature files are ``DIR/{slide_id}.h5`` (CLAM/TRIDENT layout, read through :mod:`wsi.store.h5`).
The labels CSV has a ``slide_id`` column, an optional ``patient_id`` column, and target
columns; an empty cell means "unknown" for that target. Slides in the table without a
feature file, feature files without a row, and zero-tile bags are left out of the cohort
and *reported* (a warning and :meth:`Cohort.report`), never dropped silently.

:class:`BagSequence` holds no open files: a streamed bag is read from its HDF5 file on each
access, so the sequence pickles and works from DataLoader worker processes.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from wsi.errors import FeatureFileError, LabelsError
from wsi.store.h5 import FeatureBag

ID_COLUMNS = ("slide_id", "patient_id")
# Cells that mean "unknown" in target columns besides empty ones (R writes NA, Excel #N/A).
# Not "None": it is a plausible class name (immune infiltration none/low/high).
UNKNOWN_TOKENS = frozenset({"NA", "N/A", "#N/A", "NaN", "nan", "NULL", "null"})
DEFAULT_CACHE_FRACTION = 0.25
FALLBACK_CACHE_BYTES = 2 << 30
SHOWN_NAMES = 5
PROGRESS_MIN_BYTES = 1 << 30  # show a progress bar when caching at least this much
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+(,\d+)?([eE][+-]?\d+)?$")


# --------------------------------------------------------------------------- labels


def _separator(header: str) -> str:
    """The most frequent of , ; TAB in the header line (a single column: ',')."""
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _stripped(series: pd.Series, unknown: frozenset[str]) -> pd.Series:
    """Cells as stripped ``str`` (object dtype), NaN for empty cells and ``unknown`` tokens."""
    values = [v.strip() if isinstance(v, str) else ("" if pd.isna(v) else str(v)) for v in series]
    return pd.Series(
        [np.nan if v == "" or v in unknown else v for v in values], index=series.index, dtype=object
    )


def _as_numbers(series: pd.Series, decimal_comma: bool) -> pd.Series:
    """The column as int64/float64 when every known cell is a number (``0,5`` too in ``;``
    files), else unchanged."""
    known = series.dropna()
    if known.empty:
        return series
    numbers = pd.to_numeric(series, errors="coerce")
    if numbers.notna().sum() == len(known):
        return numbers
    if decimal_comma and all(_DECIMAL_COMMA.fullmatch(v) for v in known):
        return pd.to_numeric(series.str.replace(",", ".", regex=False))
    return series


def _where(positions: Sequence[int], unit: str) -> str:
    """``line 4`` / ``lines 2 and 4`` / ``lines 2, 4, 9 and 12`` (``unit``: line or row)."""
    shown = [str(int(p)) for p in positions[:SHOWN_NAMES]]
    if len(positions) > SHOWN_NAMES:
        shown[-1] += f" (+{len(positions) - SHOWN_NAMES} more)"
    if len(shown) == 1:
        return f"{unit} {shown[0]}"
    return f"{unit}s {', '.join(shown[:-1])} and {shown[-1]}"


def _clean_labels(
    frame: pd.DataFrame,
    source: str,
    decimal_comma: bool = False,
    lines: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Strip names and cells, check ``slide_id``, fold identical duplicate rows.

    ``lines``: the file line of each row of ``frame``, for messages (else rows are counted
    from 1 below the header).
    """
    if "slide_id" not in frame.columns and frame.index.name == "slide_id":
        frame = frame.reset_index()
    frame = frame.copy()
    frame.columns = [str(c).strip() for c in frame.columns]
    if "slide_id" not in frame.columns:
        close = [c for c in frame.columns if c.lower().replace(" ", "_") == "slide_id"]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LabelsError(
            f"{source}: no 'slide_id' column{hint}; columns are {list(frame.columns)}. "
            "Name the column of slide file names (without extension) 'slide_id'."
        )
    unit = "line" if lines is not None else "row"
    where = pd.Series(
        np.asarray(lines if lines is not None else np.arange(len(frame)) + 1), index=frame.index
    )
    for column in frame.columns:
        if column in ID_COLUMNS:
            frame[column] = _stripped(frame[column], frozenset())
        else:
            frame[column] = _as_numbers(_stripped(frame[column], UNKNOWN_TOKENS), decimal_comma)
    frame = frame[frame.notna().any(axis=1)]  # rows of empty cells (Excel's ;;;)
    blank_id = frame["slide_id"].isna()
    if blank_id.any():
        rows = [int(i) + 1 for i in frame.index[blank_id][:SHOWN_NAMES]]
        at = f" at {_where(where[frame.index[blank_id]].tolist(), unit)}" if lines else ""
        raise LabelsError(
            f"{source}: {int(blank_id.sum())} row(s) have values but no slide_id (data rows "
            f"{rows}, counting from 1 below the header{at}); fill in the slide_id or delete them"
        )
    unique = frame.drop_duplicates()
    repeated = unique["slide_id"][unique["slide_id"].duplicated()].unique().tolist()
    if repeated:
        found = "; ".join(
            f"{sid} on {_where(where[frame.index[frame['slide_id'] == sid]].tolist(), unit)}"
            for sid in repeated[:SHOWN_NAMES]
        )
        raise LabelsError(
            f"{source}: slide_id(s) {_names(repeated)} appear on several rows with different "
            f"values ({found}); keep one row per slide (a patient's slides share a patient_id "
            "instead)"
        )
    return unique.reset_index(drop=True)


def _decoded(raw: bytes, source: Path) -> str:
    """The text of a labels file: UTF-8 (BOM or not) or UTF-16 with its BOM (Excel's
    "Unicode text"); anything else is a :class:`LabelsError` naming the line."""
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        return raw.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n" if not utf16 else "\n".encode("utf-16-le")) + 1
        raise LabelsError(
            f"{source}: not UTF-8 text ({exc.reason} at line {line}, byte {exc.start}); save the "
            "CSV as UTF-8 (Excel: 'CSV UTF-8')"
        ) from exc


def _records(text: str, sep: str, source: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the data rows and their file line numbers of a CSV text.

    Rows of empty cells are skipped. A repeated header line (two files joined), a row with
    more non-empty fields than the header, or a short row holding another separator (mixed
    separators) is a :class:`LabelsError` naming the line; other short rows are padded.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for fields in reader:
            fields = [f.replace("\ufeff", "") for f in fields]
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = fields
                continue
            line = reader.line_num
            if [f.strip() for f in fields] == [h.strip() for h in header]:
                raise LabelsError(
                    f"{source}: line {line} repeats the header (were two CSV files joined, "
                    "e.g. with cat?); keep one header line and check that both parts have "
                    "the same columns in the same order"
                )
            if len(fields) > len(header) and any(f.strip() for f in fields[len(header) :]):
                raise LabelsError(
                    f"{source}: line {line} has {len(fields)} fields but the header has "
                    f"{len(header)} (separator {sep!r}); remove the extra values, or quote "
                    f"cells that contain {sep!r}"
                )
            if len(fields) < len(header):
                others = [c for c in (",", ";", "\t") if c != sep and any(c in f for f in fields)]
                if others:
                    raise LabelsError(
                        f"{source}: line {line} has {len(fields)} field(s) but the header has "
                        f"{len(header)} (separator {sep!r}) and it contains {others[0]!r}: "
                        f"mixed separators; use {sep!r} on every line"
                    )
            rows.append((fields + [""] * len(header))[: len(header)])
            lines.append(line)
    except csv.Error as exc:
        raise LabelsError(
            f"{source}: not a readable CSV at line {reader.line_num} ({exc}); check its quotes "
            "and separators"
        ) from exc
    if header is None:
        raise LabelsError(f"{source}: the labels file is empty; it needs a 'slide_id' header row")
    return header, rows, lines


def _named_columns(
    header: list[str], rows: list[list[str]], source: Path
) -> tuple[list[str], list[list[str]]]:
    """Drop unnamed columns that hold nothing (trailing separators); refuse unnamed columns
    with values and columns named twice."""
    names = [h.strip() for h in header]
    keep = []
    for i, name in enumerate(names):
        if name:
            keep.append(i)
        elif any(row[i].strip() for row in rows):
            raise LabelsError(
                f"{source}: column {i + 1} has values but no name in the header; name it"
            )
    seen: dict[str, int] = {}
    for i in keep:
        if names[i] in seen:
            raise LabelsError(
                f"{source}: column {names[i]!r} appears twice (columns {seen[names[i]] + 1} and "
                f"{i + 1}); rename one"
            )
        seen[names[i]] = i
    return [names[i] for i in keep], [[row[i] for i in keep] for row in rows]


def read_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a labels CSV: one row per slide, ``slide_id`` (and ``patient_id``) as strings.

    Accepts a UTF-8 BOM, UTF-16 with a BOM, ``,`` ``;`` or TAB separators (from the header
    line), whitespace around ids and cells, and ids that look numeric (``007`` stays
    ``"007"``). Target columns whose known cells are all numbers become numbers (``0,5``
    too in ``;`` files). Empty cells and ``NA``/``N/A``/``#N/A``/``NaN``/``NULL`` in target
    columns become NaN ("unknown"). Identical duplicate rows are folded into one.

    Raises :class:`LabelsError` naming the file and the line or column: a missing or
    unreadable file, text that is not UTF-8, no ``slide_id`` column, a column named twice,
    a repeated header line, a row with more fields than the header or with mixed
    separators, a row with values but no ``slide_id``, one slide with conflicting rows.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as exc:
        raise LabelsError(f"labels file not found: {p}") from exc
    except OSError as exc:
        raise LabelsError(f"{p}: cannot read the labels file ({exc.strerror})") from exc
    text = _decoded(raw, p)
    header_line = next((line for line in text.splitlines() if line.strip()), "")
    if not header_line:
        raise LabelsError(f"{p}: the labels file is empty; it needs a 'slide_id' header row")
    sep = _separator(header_line)
    header, rows, lines = _records(text, sep, p)
    columns, rows = _named_columns(header, rows, p)
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    return _clean_labels(frame, str(p), decimal_comma=sep == ";", lines=lines)


# --------------------------------------------------------------------------- bags


class BagSequence(Sequence[np.ndarray]):
    """One float32 (N, D) array per slide, streamed from HDF5 or held in RAM.

    Streamed: item ``i`` opens slide i's features file, reads it whole, and closes it, so
    nothing is open between reads (pickles; safe in DataLoader workers). Cached: item ``i``
    is the array in RAM itself (do not modify it in place).
    """

    def __init__(self, files: Sequence[FeatureBag], arrays: Sequence[np.ndarray] | None = None):
        if arrays is not None and len(arrays) != len(files):
            raise ValueError(f"{len(arrays)} arrays for {len(files)} feature files")
        dims = {f.feature_dim for f in files}
        if len(dims) > 1:
            raise FeatureFileError(f"feature files of different widths {sorted(dims)}")
        self.files = list(files)
        self._arrays = None if arrays is None else list(arrays)

    @property
    def cached(self) -> bool:
        """True when the bags are held in RAM."""
        return self._arrays is not None

    @property
    def feature_dim(self) -> int:
        """D, the width of every bag's rows (0 for an empty sequence)."""
        return self.files[0].feature_dim if self.files else 0

    @property
    def n_tiles(self) -> np.ndarray:
        """int64 (len,) tiles per bag, known without reading features."""
        return np.array([len(f) for f in self.files], dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of all bags as float32, known without reading features."""
        return int(self.n_tiles.sum()) * self.feature_dim * 4

    @property
    def paths(self) -> list[Path]:
        """The features file of each bag."""
        return [f.path for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        held = "in RAM" if self.cached else "streamed"
        return (
            f"<BagSequence {len(self)} bags, {int(self.n_tiles.sum())} tiles × "
            f"{self.feature_dim}, {_bytes(self.nbytes)} {held}>"
        )

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> BagSequence: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | BagSequence:
        """Bag ``index`` as float32 (N, D); a slice gives a sub-sequence (no reads)."""
        if isinstance(index, slice):
            arrays = None if self._arrays is None else self._arrays[index]
            return BagSequence(self.files[index], arrays)
        return self.load(index)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.load(i) for i in range(len(self)))

    def load(self, index: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Bag ``index`` as float32 (N, D), or only its ``rows`` (distinct tile indices),
        returned in ascending row order. Streamed bags read only those rows from disk."""
        file = self.files[index]
        if rows is None:
            return file.load() if self._arrays is None else self._arrays[index]
        rows = np.sort(np.asarray(rows, dtype=np.int64).reshape(-1))
        if rows.size and (rows[0] < 0 or rows[-1] >= len(file) or np.any(np.diff(rows) == 0)):
            raise IndexError(
                f"rows must be distinct tile indices in [0, {len(file)}) for {file.path.name}"
            )
        if self._arrays is not None:
            return self._arrays[index][rows]
        return file.load(rows) if rows.size else np.zeros((0, file.feature_dim), np.float32)


# --------------------------------------------------------------------------- cohort


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN_NAMES])
    more = len(items) - SHOWN_NAMES
    return shown + (f", … (+{more} more)" if more > 0 else "")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _bytes(n_bytes: int) -> str:
    """``n_bytes`` in the largest binary unit that keeps it at least 1 (B … GiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.3g} {unit}"
    return f"{n_bytes} B"


def default_cache_bytes() -> int:
    """The ``cache="auto"`` limit: 25 % of physical RAM (2 GiB where RAM is unknown)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_CACHE_BYTES
    return int(ram * DEFAULT_CACHE_FRACTION) if ram > 0 else FALLBACK_CACHE_BYTES


@dataclass
class Cohort:
    """Slides that have both a labels row and a non-empty features file, in labels order.

    ``labels`` row i and ``bags[i]`` describe ``slide_ids[i]``. What was left out is listed:
    ``missing_features`` (labelled, no file), ``unlabelled`` (file, no row) and
    ``empty_bags`` (labelled files with 0 tiles: blank slides a MIL head cannot use) and
    ``unreadable`` (labelled files that are truncated, of the wrong shape or hold NaN:
    ``{slide_id: the error message naming the file and the fix}``).
    """

    slide_ids: list[str]
    labels: pd.DataFrame
    bags: BagSequence
    feature_dim: int
    encoder: str
    features_dir: Path
    missing_features: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    empty_bags: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    cache_limit_bytes: int | None = None

    def __len__(self) -> int:
        return len(self.slide_ids)

    def __repr__(self) -> str:
        left_out = (
            len(self.missing_features)
            + len(self.unlabelled)
            + len(self.empty_bags)
            + len(self.unreadable)
        )
        held = "in RAM" if self.bags.cached else "streamed"
        return (
            f"<Cohort {len(self)} slides, {int(self.bags.n_tiles.sum())} tiles × "
            f"{self.feature_dim} ({self.encoder or 'encoder unknown'}), bags {held}, "
            f"targets {', '.join(self.targets) or 'none'}, {left_out} left out>"
        )

    def report(self) -> str:
        """One paragraph: slides kept, what was left out (counts and first names), how the
        bags are held, and known values per named target."""
        encoder = f", encoder {self.encoder}" if self.encoder else ""
        parts = [
            f"{_plural(len(self), 'slide', 'slides')} with labels and features "
            f"({int(self.bags.n_tiles.sum())} tiles, {self.feature_dim}-d{encoder})"
        ]
        if self.missing_features:
            n = len(self.missing_features)
            parts.append(
                f"{_plural(n, 'labelled slide has', 'labelled slides have')} no features in "
                f"{self.features_dir} ({_names(self.missing_features)})"
            )
        if self.unlabelled:
            n = len(self.unlabelled)
            parts.append(
                f"{_plural(n, 'feature file has', 'feature files have')} no labels "
                f"({_names(self.unlabelled)})"
            )
        if self.empty_bags:
            n = len(self.empty_bags)
            parts.append(
                f"{_plural(n, 'labelled slide has', 'labelled slides have')} 0 tiles and "
                f"{'is' if n == 1 else 'are'} left out ({_names(self.empty_bags)})"
            )
        if self.unreadable:
            n = len(self.unreadable)
            what = _plural(n, "labelled slide has an", "labelled slides have")
            parts.append(
                f"{what} unreadable feature file{'' if n == 1 else 's'} and "
                f"{'is' if n == 1 else 'are'} left out "
                f"({_names(list(self.unreadable))}): delete {'it' if n == 1 else 'them'} and "
                "re-run `wsi embed`"
            )
        for target in self.targets:
            known = int(self.labels[target].notna().sum())
            parts.append(f"{target!r} known for {known} of {len(self)}")
        if self.bags.cached:
            held = f"bags cached in RAM ({_gib(self.bags.nbytes)})"
        else:
            held = f"bags streamed from HDF5 ({_gib(self.bags.nbytes)}"
            if self.cache_limit_bytes is not None and self.bags.nbytes > self.cache_limit_bytes:
                held += f" > cache limit {_gib(self.cache_limit_bytes)}"
            held += ")"
        return "; ".join(parts) + f"; {held}."


def feature_files(features_dir: Path) -> dict[str, Path]:
    """``{slide_id: path}`` of ``DIR/*.h5``; errors that point at the right folder."""
    if not features_dir.is_dir():
        raise FeatureFileError(
            f"features folder not found: {features_dir}; pass OUT/features/<encoder> of a "
            "`wsi embed` run"
        )
    files = {
        p.stem: p
        for p in sorted(features_dir.glob("*.h5"))
        if p.is_file() and not p.name.startswith(".")
    }
    if not files:
        inner = sorted(d.name for d in features_dir.iterdir() if d.is_dir() and any(d.glob("*.h5")))
        hint = f"; it has subfolders with .h5 files {inner}: pass one of those" if inner else ""
        raise FeatureFileError(f"no .h5 feature files in {features_dir}{hint}")
    return files


def _check_same_kind(files: Sequence[FeatureBag], features_dir: Path) -> tuple[int, str]:
    """The shared feature dim and encoder; an error naming a file of each when they differ."""
    by_dim: dict[int, list[Path]] = {}
    by_encoder: dict[str, list[Path]] = {}
    for f in files:
        by_dim.setdefault(f.feature_dim, []).append(f.path)
        if f.encoder:
            by_encoder.setdefault(f.encoder, []).append(f.path)
    for what, groups in (("feature widths", by_dim), ("encoders", by_encoder)):
        if len(groups) > 1:
            listed = ", ".join(
                f"{key} ({paths[0].name}{f' and {len(paths) - 1} more' if len(paths) > 1 else ''})"
                for key, paths in groups.items()
            )
            raise FeatureFileError(
                f"{features_dir}: files of different {what}: {listed}. A cohort needs one "
                "encoder's features: keep each encoder's files in its own folder "
                "(OUT/features/<encoder>/) and pass one"
            )
    dim = next(iter(by_dim)) if by_dim else 0
    encoder = next(iter(by_encoder)) if by_encoder else ""
    return dim, encoder


def _opened(path: Path, slide_id: str, unreadable: dict[str, str]) -> FeatureBag | None:
    """``FeatureBag(path)``, or None with the reason recorded in ``unreadable``."""
    try:
        return FeatureBag(path)
    except FeatureFileError as exc:
        unreadable[slide_id] = str(exc)
        return None


def _cached(
    sequence: BagSequence, table: pd.DataFrame, unreadable: dict[str, str]
) -> tuple[BagSequence, pd.DataFrame]:
    """The bags read into RAM, leaving out (and recording in ``unreadable``) those whose
    rows cannot be read or are not finite; ``table`` filtered alike."""
    quiet = sequence.nbytes < PROGRESS_MIN_BYTES
    files = tqdm(sequence.files, desc="caching bags", unit="bag", leave=False, disable=quiet)
    kept, arrays = [], []
    for file, sid in zip(files, table["slide_id"], strict=True):
        try:
            arrays.append(file.load())
        except FeatureFileError as exc:
            unreadable[sid] = str(exc)
            continue
        kept.append(file)
    table = table[~table["slide_id"].isin(unreadable)].reset_index(drop=True)
    return BagSequence(kept, arrays), table


def load_cohort(
    features_dir: str | os.PathLike[str],
    labels: str | os.PathLike[str] | pd.DataFrame,
    *,
    targets: Sequence[str] = (),
    cache: bool | Literal["auto"] = "auto",
    max_cache_bytes: int | None = None,
) -> Cohort:
    """Match ``DIR/{slide_id}.h5`` feature files to labels rows and return a :class:`Cohort`.

    ``labels`` is a CSV path (read by :func:`read_labels`) or a DataFrame with a
    ``slide_id`` column. ``targets`` names columns that must exist (else
    :class:`LabelsError` listing the columns present). ``cache``: True reads every bag into
    RAM now, False streams each bag from HDF5 on every access, "auto" caches when the bags'
    float32 size (known from shapes, without reading) is at most ``max_cache_bytes``
    (default :func:`default_cache_bytes`, 25 % of RAM). Slides left out are warned about
    (a ``UserWarning`` carrying :meth:`Cohort.report`).

    Labelled feature files that cannot be used (truncated, wrong layout or shape, NaN
    values when cached) are left out like missing ones and listed in
    :attr:`Cohort.unreadable` with the reason; streamed bags are checked when read.

    Raises :class:`FeatureFileError` for a missing or empty folder, files of different
    feature dims or encoders, or when no labelled file is usable.
    """
    features_dir = Path(features_dir)
    if isinstance(labels, pd.DataFrame):
        table = _clean_labels(labels, "labels DataFrame")
    else:
        table = read_labels(labels)
    absent = [t for t in targets if t not in table.columns]
    if absent:
        raise LabelsError(
            f"target column(s) {absent} not in the labels; columns present: {list(table.columns)}"
        )
    files = feature_files(features_dir)
    has_file = table["slide_id"].isin(files).to_numpy()
    missing = table["slide_id"][~has_file].tolist()
    unlabelled = sorted(set(files) - set(table["slide_id"]))
    table = table[has_file].reset_index(drop=True)
    unreadable: dict[str, str] = {}
    opened = {sid: _opened(files[sid], sid, unreadable) for sid in table["slide_id"]}
    table = table[np.array([opened[sid] is not None for sid in table["slide_id"]], dtype=bool)]
    bags = [opened[sid] for sid in table["slide_id"]]
    dim, encoder = _check_same_kind(bags, features_dir)
    nonempty = np.array([len(b) > 0 for b in bags], dtype=bool)
    empty = table["slide_id"][~nonempty].tolist()
    table = table[nonempty].reset_index(drop=True)
    sequence = BagSequence([b for b, keep in zip(bags, nonempty, strict=True) if keep])
    limit = default_cache_bytes() if max_cache_bytes is None else int(max_cache_bytes)
    if cache is True or (cache == "auto" and sequence.nbytes <= limit):
        sequence, table = _cached(sequence, table, unreadable)
    cohort = Cohort(
        slide_ids=table["slide_id"].tolist(),
        labels=table,
        bags=sequence,
        feature_dim=dim,
        encoder=encoder,
        features_dir=features_dir,
        missing_features=missing,
        unlabelled=unlabelled,
        empty_bags=empty,
        unreadable=unreadable,
        targets=list(targets),
        cache_limit_bytes=limit if cache == "auto" else None,
    )
    if missing or unlabelled or empty or unreadable:
        warnings.warn(cohort.report(), UserWarning, stacklevel=2)
    if len(cohort) == 0 and unreadable:
        raise FeatureFileError(
            f"no usable feature file for the labelled slides in {features_dir}: "
            f"{cohort.report()} First: {next(iter(unreadable.values()))}"
        )
    if len(cohort) == 0:
        raise LabelsError(
            f"no slide has both a labels row and a non-empty feature file: {cohort.report()} "
            "Check that slide_id values are the feature file names without '.h5'."
        )
    return cohort
