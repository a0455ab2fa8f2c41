"""``wsi tme profile``: slides → one TME profile per slide and the cohort table ``tme.csv``.

    wsi.tme.profile_run(["slides/"], "out/", classifier="tissue.clf", features="emb/")

For each slide: its feature file (``wsi embed``'s, found under ``features`` or ``out``;
slides without one are embedded into ``out`` first at the classifier's scale and encoder),
per-tile class probabilities from the classifier (no pixels), every tile's pixels read once
for nuclei and lymphocyte-like cells (:mod:`wsi.pipeline.tme_nuclei`, in worker processes
when ``workers`` > 0), then :func:`wsi.tme.profile.slide_profile`. Written to ``out``::

    tme.csv                       one row per slide (the profile columns, then provenance)
    tme/{slide_id}.json           the row, the parameters and the provenance
    tme/{slide_id}.tiles.csv      per tile: x, y (level-0 px), prob_<class>, class, role,
                                  confidence, nuclei counts, density, compartments
    tme/{slide_id}.geojson        QuPath detections: role (coloured), probabilities, counts
    tme/{slide_id}.roles.png | .lymphocytes.png | .phenotype.png    maps over the thumbnail
    tme/manifest.csv              slide_id, path, status (ok|no_tissue|failed), n_tiles, ...

A slide whose JSON holds the same key (feature file, classifier hash, parameters) is not
redone; a failed slide gets a ``failed`` row and the others go on.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.atomic import write_atomic, write_text_atomic
from models.version import library_version
from wsi.io.slide import slide_id_of
from wsi.pipeline.batch import duplicate_id_row, failed_row, find_slides
from wsi.pipeline.settings import encoder_dirname
from wsi.pipeline.tme_nuclei import COUNT_COLUMNS, TileGeometry, count_nuclei
from wsi.store.manifest import Manifest, manifest_row
from wsi.tme.classifier import TileClassifier, classify_feature_file
from wsi.tme.nuclei import NucleusParams
from wsi.tme.phenotype import PhenotypeThresholds
from wsi.tme.profile import ProfileParams, TmeProfile, slide_profile

Row = dict[str, Any]

PHENOTYPE_COLOURS = {"inflamed": (220, 40, 40), "excluded": (240, 170, 20), "desert": (60, 90, 200)}
"""Colours of the phenotype grid map and its legend."""


@dataclass(frozen=True)
class ProfileRunSettings:
    """Everything ``wsi tme profile`` needs besides slides, output folder and classifier.

    features: folder(s) searched for ``wsi embed`` feature files (``{dir}/features/
        {encoder}/{id}.h5``, ``{dir}/{encoder}/{id}.h5`` or ``{dir}/{id}.h5``); the output
        folder is always searched last, and missing slides are embedded into it.
    params: the profile's distances and phenotype thresholds.
    cohort_quantile: None (the literature thresholds of ``params``) or a quantile in (0, 1):
        the phenotype thresholds are set from this quantile of the cohort's tumour grid
        cells (:meth:`PhenotypeThresholds.from_cohort`) and every profile is recomputed.
    nuclei: nucleus detection parameters; workers: detection processes (0: in-process);
    backend: ``"local"`` or ``"ray"`` (one Ray task per slide to profile; ``ray_address``: the
        cluster, None for a local Ray or ``RAY_ADDRESS``; ``ray_retries``: extra attempts of
        a task whose worker dies);
    batch_size: tiles per read; weights / device: of the encoder for slides to embed;
    slide_mpp: level-0 µm/px for slides to embed whose metadata has none (as ``--slide-mpp``);
    maps: write PNG maps and GeoJSON; skip_done: reuse finished slides; progress / debug.
    """

    features: tuple[Path, ...] = ()
    params: ProfileParams = field(default_factory=ProfileParams)
    cohort_quantile: float | None = None
    nuclei: NucleusParams = field(default_factory=NucleusParams)
    workers: int = 0
    backend: str = "local"
    ray_address: str | None = None
    ray_retries: int = 2
    batch_size: int = 32
    weights: str | os.PathLike[str] | None = None
    device: str | None = None
    maps: bool = True
    slide_mpp: float | None = None
    skip_done: bool = True
    progress: bool = True
    debug: bool = False


def profile_settings(
    *,
    stroma_um: float = 500.0,
    inflamed_per_mm2: float | None = None,
    excluded_per_mm2: float | None = None,
    **fields: Any,
) -> ProfileRunSettings:
    """:class:`ProfileRunSettings` with the stromal distance (µm), the phenotype thresholds
    (lymphocytes per mm²; None: :class:`PhenotypeThresholds`' defaults) and other ``fields``."""
    from wsi.errors import InvalidParameterError
    from wsi.tme.phenotype import PhenotypeThresholds
    from wsi.tme.regions import RegionParams

    if not stroma_um > 0:
        raise InvalidParameterError(f"the stromal distance must be > 0 µm, got {stroma_um}")
    quantile = fields.get("cohort_quantile")
    if quantile is not None and not 0 < quantile < 1:
        raise InvalidParameterError(f"--cohort-quantile must be between 0 and 1, got {quantile}")
    given = {"inflamed_per_mm2": inflamed_per_mm2, "excluded_per_mm2": excluded_per_mm2}
    given = {name: value for name, value in given.items() if value is not None}
    for name, value in given.items():
        if not value >= 0:
            raise InvalidParameterError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    thresholds = replace(PhenotypeThresholds(), **given, source="user") if given else None
    params = ProfileParams(regions=RegionParams(stroma_distance_um=stroma_um))
    if thresholds is not None:
        params = replace(params, thresholds=thresholds)
    return ProfileRunSettings(params=params, **fields)


def find_feature_file(slide_id: str, encoder: str, roots: Iterable[Path]) -> Path | None:
    """The first existing feature file of ``slide_id`` for ``encoder`` under ``roots``."""
    name = encoder_dirname(encoder)
    for root in roots:
        for candidate in (
            root / "features" / name / f"{slide_id}.h5",
            root / name / f"{slide_id}.h5",
            root / f"{slide_id}.h5",
        ):
            if candidate.is_file():
                return candidate
    return None


def _geometry(slide_path: Path, attrs: dict[str, Any]) -> TileGeometry:
    def number(key: str) -> float:
        return float(np.ravel(attrs[key])[0])

    size = (
        int(number("target_patch_size"))
        if "target_patch_size" in attrs
        else int(number("patch_size"))
    )
    mpp0 = number("mpp_level0")
    size0 = number("patch_size_level0")
    return TileGeometry(
        str(slide_path),
        mpp0,
        np.zeros((0, 2), np.int64),
        size0,
        size,
        int(number("patch_level")),
        size0 * mpp0 / size,
    )


@dataclass(frozen=True, repr=False)
class SlideTiles:
    """One slide's per-tile table (see the module docstring) and its geometry: tile side
    and lattice stride in µm, level-0 µm/px."""

    table: pd.DataFrame
    tile_um: float
    stride_um: float
    mpp0: float

    def __repr__(self) -> str:
        return f"SlideTiles({len(self.table)} tiles of {self.tile_um:g} µm)"


def tile_table(
    classifier: TileClassifier,
    features_path: Path,
    slide_path: Path,
    settings: ProfileRunSettings,
) -> SlideTiles:
    """Classify a feature file's tiles and count their nuclei from the slide's pixels."""
    from wsi.store.h5 import read_tile_file

    head = read_tile_file(features_path, features=False)
    table = classify_feature_file(classifier, features_path)
    geometry = replace(_geometry(slide_path, head.coords_attrs), coords=head.coords)
    counts = count_nuclei(
        geometry,
        workers=settings.workers,
        batch_size=settings.batch_size,
        params=settings.nuclei,
        progress=settings.progress,
        desc=slide_id_of(slide_path)[:30],
    )
    mpp0 = geometry.slide_mpp or 0.0
    tile_um = geometry.size_level0 * mpp0
    overlap = float(np.ravel(head.coords_attrs.get("overlap", 0))[0])
    probs = table[[f"prob_{c}" for c in classifier.classes]].to_numpy()
    fraction = head.tissue_fraction if head.tissue_fraction is not None else np.ones(len(table))
    table = table.assign(
        x_um=table["x"] * mpp0,
        y_um=table["y"] * mpp0,
        confidence=probs.max(axis=1) if len(table) else np.zeros(0),
        tissue_fraction=np.asarray(fraction, float),
        **{c: counts[:, k] for k, c in enumerate(COUNT_COLUMNS)},
    )
    table["lymphocytes_per_mm2"] = table["n_lymphocytes"] / (tile_um / 1000) ** 2
    stride_um = tile_um * (1 - overlap / geometry.size) if geometry.size else tile_um
    return SlideTiles(table, tile_um, stride_um, mpp0)


def _key(
    classifier: TileClassifier,
    features_path: Path,
    prov: dict[str, Any],
    settings: ProfileRunSettings,
) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "features": str(features_path.resolve()),
        "features_key": prov.get("embed_key") or prov.get("slide_quickhash"),
        "classifier_sha256": classifier.sha256,
        "params": settings.params.as_dict(),
        "nuclei": asdict(settings.nuclei),
    }


def _clean(value: Any) -> Any:
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _provenance(
    classifier: TileClassifier,
    slide_path: Path,
    tiles: SlideTiles,
    features_path: Path,
    settings: ProfileRunSettings,
) -> dict[str, Any]:
    return {
        "library": "wsi",
        "version": library_version(),
        "slide_path": str(slide_path),
        "features": str(features_path),
        "encoder": classifier.encoder,
        "encoder_weights_sha256": classifier.weights_sha256,
        "classifier_sha256": classifier.sha256,
        "classifier_classes": list(classifier.classes),
        "classifier_roles": dict(classifier.roles),
        "tile_mpp": classifier.tile_mpp,
        "tile_um": tiles.tile_um,
        "stride_um": tiles.stride_um,
        "mpp_level0": tiles.mpp0,
        "thresholds": settings.params.thresholds.as_dict(),
    }


def write_profile(
    out: Path, profile: TmeProfile, key: dict[str, Any], provenance: dict[str, Any]
) -> None:
    """``tme/{id}.json`` (row, parameters, provenance, key) and ``tme/{id}.tiles.csv``."""
    sid = profile.row["slide_id"]
    body = {
        "profile": {k: _clean(v) for k, v in profile.row.items()},
        "params": profile.params.as_dict(),
        "provenance": provenance,
        "key": key,
    }
    keep = [c for c in profile.tiles.columns if c not in ("ix", "iy", "cx_um", "cy_um")]
    write_atomic(
        out / "tme" / f"{sid}.tiles.csv",
        lambda tmp: profile.tiles[keep].to_csv(tmp, index=False, float_format="%.6g"),
    )
    write_text_atomic(out / "tme" / f"{sid}.json", json.dumps(body, indent=2))


def write_maps(
    out: Path,
    slide_path: Path,
    profile: TmeProfile,
    tile_level0: float,
    mpp0: float,
    slide_mpp: float | None = None,
) -> None:
    """The role, lymphocyte-density and phenotype-grid PNGs and the QuPath GeoJSON."""
    from wsi.io.slide import open_slide
    from wsi.tme.roles import ROLE_COLOURS
    from wsi.viz.geojson import tile_detections
    from wsi.viz.heatmap import save_png
    from wsi.viz.tme_maps import category_map, density_map

    sid, tiles = profile.row["slide_id"], profile.tiles
    coords = tiles[["x", "y"]].to_numpy(float)
    with open_slide(slide_path, mpp=slide_mpp) as slide:
        downsample = max(max(slide.dimensions) / 1536, 1.0)
        thumb = slide.read_thumbnail(downsample)
    folder = out / "tme"
    save_png(
        category_map(
            thumb,
            downsample,
            coords,
            tile_level0,
            tiles["role"].tolist(),
            ROLE_COLOURS,
            title=f"{sid}: tissue roles",
        ),
        folder / f"{sid}.roles.png",
    )
    save_png(
        density_map(
            thumb,
            downsample,
            coords,
            tile_level0,
            tiles["lymphocytes_per_mm2"].to_numpy(float),
            title=f"{sid}: lymphocyte-like nuclei",
        ),
        folder / f"{sid}.lymphocytes.png",
    )
    cell_level0 = profile.params.thresholds.cell_um / mpp0
    cells = profile.cells
    cell_xy = cells[["gx", "gy"]].to_numpy(float) * cell_level0
    row = profile.row
    title = (
        f"{sid}: immune phenotype {row['immune_phenotype'] or 'none'} "
        f"({row['phenotype_cells']} tumour grid cells of "
        f"{profile.params.thresholds.cell_um / 1000:g} mm)"
    )
    save_png(
        category_map(
            thumb,
            downsample,
            cell_xy,
            cell_level0,
            cells["call"].tolist(),
            PHENOTYPE_COLOURS,
            alpha=0.35,
            outline=True,
            title=title,
        ),
        folder / f"{sid}.phenotype.png",
    )
    measures = [c for c in tiles.columns if c.startswith("prob_")] + [
        "confidence",
        *COUNT_COLUMNS,
        "lymphocytes_per_mm2",
        "distance_um",
    ]
    collection = tile_detections(
        coords,
        tile_level0,
        classifications=tiles["role"].tolist(),
        colours=ROLE_COLOURS,
        measurements=tiles[measures],
    )
    write_text_atomic(folder / f"{sid}.geojson", json.dumps(collection))


@dataclass
class _Slide:
    """One slide of a run: where its files are and what is known so far."""

    index: int
    path: Path
    features: Path | None = None
    row: Row | None = None
    manifest: Row | None = None


def _done(out: Path, sid: str, key: dict[str, Any]) -> Row | None:
    path = out / "tme" / f"{sid}.json"
    if not path.is_file() or not (out / "tme" / f"{sid}.tiles.csv").is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if body.get("key") != json.loads(json.dumps(key)):
        return None
    return {k: (math.nan if v is None else v) for k, v in body["profile"].items()}


def profile_one(
    item: _Slide, classifier: TileClassifier, out: Path, settings: ProfileRunSettings
) -> None:
    """Profile one slide into ``out`` (or find it done); fills ``item.row`` and
    ``item.manifest``; a failure becomes a ``failed`` manifest row."""
    start = time.perf_counter()
    try:
        from wsi.store.h5 import read_tile_file

        assert item.features is not None
        prov = read_tile_file(item.features, features=False).provenance
        key = _key(classifier, item.features, prov, settings)
        done = _done(out, slide_id_of(item.path), key) if settings.skip_done else None
        if done is None:
            done = _compute(item, classifier, out, settings, key)
        item.row = done
        status = "ok" if done["n_tiles"] else "no_tissue"
        item.manifest = manifest_row(
            item.path, status, n_tiles=done["n_tiles"], seconds=time.perf_counter() - start
        )
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
        item.manifest = failed_row(item.path, exc, start, settings.debug)


def _compute(
    item: _Slide,
    classifier: TileClassifier,
    out: Path,
    settings: ProfileRunSettings,
    key: dict[str, Any],
) -> Row:
    assert item.features is not None
    tiles = tile_table(classifier, item.features, item.path, settings)
    sid = slide_id_of(item.path)
    profile = slide_profile(
        tiles.table,
        tile_um=tiles.tile_um,
        stride_um=tiles.stride_um,
        params=settings.params,
        slide_id=sid,
    )
    prov = _provenance(classifier, item.path, tiles, item.features, settings)
    write_profile(out, profile, key, prov)
    if settings.maps:
        _maps(out, item.path, profile, tiles.tile_um, tiles.mpp0)
    return {**profile.row, **_row_provenance(classifier)}


def _maps(out: Path, slide_path: Path, profile: TmeProfile, tile_um: float, mpp0: float) -> None:
    if len(profile.tiles):
        write_maps(out, slide_path, profile, tile_um / mpp0, mpp0, slide_mpp=mpp0)


def _row_provenance(classifier: TileClassifier) -> Row:
    return {
        "encoder": classifier.encoder,
        "classifier_sha256": classifier.sha256[:16],
        "tile_mpp": classifier.tile_mpp,
    }


def _embed_missing(
    items: list[_Slide], out: Path, classifier: TileClassifier, settings: ProfileRunSettings
) -> None:
    """Embed slides without a feature file into ``out`` at the classifier's scale."""
    from wsi.options import TileOptions
    from wsi.pipeline.embed import run_embedding
    from wsi.pipeline.settings import EmbedSettings

    missing = [it for it in items if it.features is None]
    if not missing:
        return
    embed = EmbedSettings(
        tiling=TileOptions(
            mpp=classifier.tile_mpp, size=classifier.tile_size, slide_mpp=settings.slide_mpp
        ),
        encoder=classifier.encoder,
        weights=settings.weights,
        device=settings.device,
        progress=settings.progress,
        debug=settings.debug,
    )
    rows = run_embedding([it.path for it in missing], out, embed)
    for item, row in zip(missing, rows, strict=True):
        if row["status"] == "failed":
            item.manifest = row
        else:
            item.features = find_feature_file(slide_id_of(item.path), classifier.encoder, [out])


def _stored(out: Path, item: _Slide) -> tuple[pd.DataFrame, dict[str, Any]]:
    sid = slide_id_of(item.path)
    body = json.loads((out / "tme" / f"{sid}.json").read_text(encoding="utf-8"))
    return pd.read_csv(out / "tme" / f"{sid}.tiles.csv"), body


def _reprofile(
    table: pd.DataFrame, body: dict[str, Any], params: ProfileParams, sid: str = ""
) -> TmeProfile:
    prov = body["provenance"]
    return slide_profile(
        table, tile_um=prov["tile_um"], stride_um=prov["stride_um"], params=params, slide_id=sid
    )


def _recompute_with_cohort(
    items: list[_Slide], classifier: TileClassifier, out: Path, settings: ProfileRunSettings
) -> None:
    """Set the phenotype thresholds from the cohort's grid cells; redo every profile."""
    done = [it for it in items if it.row is not None and it.row["n_tiles"]]
    stored = {it.index: _stored(out, it) for it in done}
    cells = [_reprofile(*stored[it.index], settings.params).cells for it in done]
    assert settings.cohort_quantile is not None
    try:
        thresholds = PhenotypeThresholds.from_cohort(
            cells, quantile=settings.cohort_quantile, base=settings.params.thresholds
        )
    except ValueError as exc:  # no tumour anywhere: the literature thresholds stay
        from tqdm.auto import tqdm

        tqdm.write(f"cohort-quantile thresholds: {exc}")
        return
    params = replace(settings.params, thresholds=thresholds)
    for it in done:
        sid = slide_id_of(it.path)
        table, body = stored[it.index]
        profile = _reprofile(table, body, params, sid)
        write_profile(
            out, profile, body["key"], {**body["provenance"], "thresholds": thresholds.as_dict()}
        )
        it.row = {**profile.row, **_row_provenance(classifier)}
        if settings.maps:
            prov = body["provenance"]
            _maps(out, it.path, profile, prov["tile_um"], prov["mpp_level0"])


def _run_local(
    items: list[_Slide], classifier: TileClassifier, out: Path, settings: ProfileRunSettings
) -> None:
    from tqdm.auto import tqdm

    for item in tqdm(items, desc="slides", unit="slide", disable=not settings.progress):
        if item.manifest is None:
            profile_one(item, classifier, out, settings)


def profile_task(
    item: _Slide, classifier: TileClassifier, out: str, settings: ProfileRunSettings
) -> _Slide:
    """One slide profiled on a Ray worker (the step of ``backend="ray"``)."""
    profile_one(item, classifier, Path(out), replace(settings, progress=False))
    return item


def _run_on_ray(
    items: list[_Slide], classifier: TileClassifier, out: Path, settings: ProfileRunSettings
) -> list[_Slide]:
    """One Ray task per slide to profile; a task that fails every attempt is a failed row."""
    from wsi.pipeline.ray_runner import connect_ray, import_ray

    ray = import_ray()
    started_here = connect_ray(ray, settings.ray_address)
    try:
        task = ray.remote(profile_task).options(
            num_cpus=max(1, settings.workers),
            max_retries=settings.ray_retries,
            retry_exceptions=True,
            name="wsi-tme-profile",
        )
        shipped = ray.put(classifier)
        refs = {
            it.index: task.remote(it, shipped, str(out), settings)
            for it in items
            if it.manifest is None
        }
        done = []
        for item in items:
            if item.index in refs:
                try:
                    item = ray.get(refs[item.index])
                except Exception as exc:  # noqa: BLE001 - e.g. a worker that died every time
                    item.manifest = failed_row(item.path, exc, time.perf_counter(), settings.debug)
            done.append(item)
        return done
    finally:
        if started_here:
            ray.shutdown()


def profile_run(
    slides: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    classifier: TileClassifier | str | os.PathLike[str],
    features: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    settings: ProfileRunSettings | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Profile every slide (files, folders or globs) into ``out_dir``; return ``tme.csv``'s
    table (one row per slide that did not fail). ``classifier``: a :class:`TileClassifier`
    or its file; ``features``: folder(s) with ``wsi embed`` feature files; ``options``:
    fields of :class:`ProfileRunSettings` (e.g. ``workers=4``, ``cohort_quantile=0.5``)."""
    settings = replace(settings or ProfileRunSettings(), **options)
    if settings.backend not in ("local", "ray"):
        from wsi.errors import InvalidParameterError

        raise InvalidParameterError(f"backend must be 'local' or 'ray', got {settings.backend!r}")
    if features is not None:
        roots = [features] if isinstance(features, str | os.PathLike) else list(features)
        settings = replace(settings, features=tuple(Path(r) for r in roots))
    clf = classifier if isinstance(classifier, TileClassifier) else TileClassifier.load(classifier)
    out = Path(out_dir)
    (out / "tme").mkdir(parents=True, exist_ok=True)
    paths = find_slides([slides] if isinstance(slides, str | os.PathLike) else slides)
    roots = [*settings.features, out]
    items = [
        _Slide(i, p, find_feature_file(slide_id_of(p), clf.encoder, roots))
        for i, p in enumerate(paths)
    ]
    seen: dict[str, Path] = {}
    for item in items:
        first = seen.setdefault(slide_id_of(item.path), item.path)
        if first != item.path:
            item.manifest, item.features = duplicate_id_row(item.path, first), out

    _embed_missing(items, out, clf, settings)
    manifest = Manifest(out / "tme" / "manifest.csv")
    if settings.backend == "ray":
        items = _run_on_ray(items, clf, out, settings)
    else:
        _run_local(items, clf, out, settings)
    for item in items:
        assert item.manifest is not None
        manifest.update(item.manifest)
    manifest.flush()
    if settings.cohort_quantile is not None:
        _recompute_with_cohort(items, clf, out, settings)
    table = pd.DataFrame([it.row for it in items if it.row is not None])
    write_atomic(out / "tme.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table
