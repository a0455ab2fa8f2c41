"""``wsi subgroups discover`` and ``wsi subgroups assign``: folders in, the output folder of
DESIGN.md's "Subgroup outputs" out, as functions a notebook can call too."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.atomic import write_atomic, write_text_atomic
from wsi.cohort import read_labels
from wsi.errors import InvalidParameterError, LabelsError
from wsi.subgroups import association as assoc
from wsi.subgroups import describe, inputs, plots
from wsi.subgroups.discovery import Discovery, discover_subgroups
from wsi.subgroups.model import SubgroupModel, load_subgroup_model


@dataclass(repr=False)
class SubgroupRun:
    """What ``discover_subgroups_run`` wrote: the discovery, the patient table the tests ran
    on, the tests (with q-values) and the output folder."""

    discovery: Discovery
    patients: pd.DataFrame
    tests: list[dict[str, Any]]
    out: Path

    def __repr__(self) -> str:
        return (
            f"<SubgroupRun k={self.discovery.model.k}, {len(self.discovery.assignments)} "
            f"slides, {len(self.patients)} patients, {len(self.tests)} tests -> {self.out}>"
        )

    def summary(self) -> str:
        """Group sizes and one line per test (p and BH q)."""
        sizes = self.discovery.assignments["group"].value_counts().sort_index()
        lines = [
            f"k = {self.discovery.model.k} (by stability): "
            + ", ".join(f"group {g}: {n} slides" for g, n in sizes.items())
        ]
        for t in self.tests:
            p = "n/a" if t["p_value"] is None else f"p = {t['p_value']:.3g}, q = {t['q_value']:.3g}"
            dropped = f" ({t['n_dropped']} dropped: missing values)" if t.get("n_dropped") else ""
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(f"  {t['test']:<11} {t['target']:<16} n = {t['n']:<4} {p}{dropped}{note}")
        return "\n".join(lines)


def slide_table(
    kind: str, features: str | os.PathLike[str], *, tile_clusters: int = 8, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The input table of ``kind`` and what the model must remember about it
    (``encoder``, ``feature_dim``, ``tile_centres``)."""
    if kind == "tme":
        return inputs.read_tme_table(features), {}
    if kind not in inputs.INPUT_KINDS:
        raise InvalidParameterError(f"--input {kind!r}: choose {', '.join(inputs.INPUT_KINDS)}")
    encoder, dim = inputs.feature_source(features)
    meta: dict[str, Any] = {"encoder": encoder, "feature_dim": dim}
    if kind == "embeddings":
        return inputs.slide_embeddings(features), meta
    centres = inputs.fit_tile_clusters(features, n_clusters=tile_clusters, seed=seed)
    return inputs.tile_cluster_compositions(features, centres), {**meta, "tile_centres": centres}


def _outcome_columns(
    labels: pd.DataFrame,
    survival: tuple[str, str] | None,
    treatment: str | None,
    covariates: Sequence[str],
    targets: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """(every outcome-side column, the label columns to test)."""
    named = [*(survival or ()), *([treatment] if treatment else []), *covariates]
    absent = [c for c in [*named, *(targets or [])] if c not in labels.columns]
    if absent:
        raise LabelsError(
            f"column(s) {absent} not in the labels; columns present: {list(labels.columns)}"
        )
    if targets is None:
        targets = [c for c in labels.columns if c not in ("slide_id", "patient_id", *named)]
    return [*named, *targets], list(targets)


def _cohort_table(table: pd.DataFrame, labels: pd.DataFrame, outcome: list[str]) -> pd.DataFrame:
    leaked = [c for c in table.columns if c in outcome]
    if leaked:
        raise InvalidParameterError(
            f"input column(s) {leaked} are also outcome/label columns; discovery must not see "
            "outcomes: remove them from the input table"
        )
    kept = table[table.index.isin(labels["slide_id"])]
    if kept.empty:
        raise LabelsError(
            "no slide of the input has a labels row; check that slide_id values "
            "match the feature file names (or the TME table's slide_id)"
        )
    return kept


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def _describe(
    run_dir: Path, table: pd.DataFrame, groups: pd.Series, tme: str | os.PathLike[str] | None
) -> dict[str, Any]:
    effects = describe.effect_sizes(table, groups)
    _write_csv(effects, run_dir / "effect_sizes.csv")
    out: dict[str, Any] = {"effect_sizes": effects.to_dict(orient="records")}
    if tme is not None:
        profile = describe.group_profiles(
            inputs.read_tme_table(tme), inputs.tme_text_columns(tme), groups
        )
        _write_csv(profile, run_dir / "group_tme.csv")
        out["tme"] = profile.to_dict(orient="records")
    return out


def _plots(
    run_dir: Path,
    found: Discovery,
    table: pd.DataFrame,
    patients: pd.DataFrame,
    tests: list[dict[str, Any]],
    survival: tuple[str, str] | None,
    treatment: str | None,
    umap: bool,
    seed: int,
) -> list[str]:
    written = []
    if umap and len(table) >= 4:
        z = found.model.transform(table)
        written.append(
            plots.umap_plot(
                z, found.assignments["group"].to_numpy(), run_dir / "umap.png", seed=seed
            )
        )
    if survival is not None:
        written.append(
            plots.km_panel(
                patients,
                time=survival[0],
                event=survival[1],
                path=run_dir / "km.png",
                treatment=treatment,
            )
        )
    forest = plots.forest_plot(tests, run_dir / "forest.png")
    return [p.name for p in [*written, forest] if p is not None]


def discover_subgroups_run(
    features: str | os.PathLike[str],
    labels: str | os.PathLike[str] | pd.DataFrame,
    out: str | os.PathLike[str],
    *,
    input_kind: str = "embeddings",
    k: Sequence[int] = tuple(range(2, 9)),
    method: str = "kmeans",
    survival: tuple[str, str] | None = None,
    treatment: str | None = None,
    covariates: Sequence[str] = (),
    targets: Sequence[str] | None = None,
    tme: str | os.PathLike[str] | None = None,
    tile_clusters: int = 8,
    resamples: int = 20,
    seed: int = 0,
    umap: bool = True,
    slides: Sequence[str | os.PathLike[str]] = (),
) -> SubgroupRun:
    """Discover subgroups in ``features`` and test them against the labels' outcomes.

    ``features`` is ``OUT/features/<encoder>`` (``input_kind`` ``"embeddings"`` or
    ``"tile-clusters"``) or a ``tme.csv`` / its folder (``"tme"``). Only slides with a labels
    row are clustered, and the clustering receives the input table alone: ``k`` is chosen
    by stability. ``survival`` is ``(time_col, event_col)``; ``treatment`` adds the group ×
    treatment interaction test (needs ``survival``); ``covariates`` adjust the Cox models;
    ``targets`` are the label columns to test (default: every other column). ``tme`` (a TME
    table) adds per-group TME means (``group_tme.csv``); ``slides`` (files, folders or globs
    of the slide files) adds ``mosaic_group_<g>.png``, representative tiles per group. Writes ``subgroups.csv``,
    ``subgroups.json`` (last), ``model.json`` + ``model.npz``, ``effect_sizes.csv`` and the
    plots (``umap.png``, ``km.png``, ``forest.png``) into ``out``.
    """
    run_dir = Path(out)
    table_labels = labels if isinstance(labels, pd.DataFrame) else read_labels(labels)
    outcome, targets = _outcome_columns(table_labels, survival, treatment, covariates, targets)
    if treatment is not None and survival is None:
        raise LabelsError(
            "--treatment needs --survival TIME:EVENT: the interaction is tested on survival"
        )
    raw, meta = slide_table(input_kind, features, tile_clusters=tile_clusters, seed=seed)
    table = _cohort_table(raw, table_labels, outcome)
    centres = meta.pop("tile_centres", None)
    found = discover_subgroups(
        table, k=k, method=method, resamples=resamples, seed=seed, input_kind=input_kind, **meta
    )
    found.model.tile_centres = centres
    found.model.save(run_dir)
    patients = assoc.patient_table(found.assignments, table_labels)
    per_slide = found.assignments.merge(
        table_labels[["slide_id"] + (["patient_id"] if "patient_id" in table_labels else [])],
        on="slide_id",
        how="left",
    )
    if "patient_id" not in per_slide:
        per_slide["patient_id"] = per_slide["slide_id"]
    per_slide["patient_id"] = per_slide["patient_id"].fillna(per_slide["slide_id"])
    _write_csv(
        per_slide[["slide_id", "patient_id", "group", "distance"]], run_dir / "subgroups.csv"
    )
    tests = assoc.associate(
        patients, survival=survival, treatment=treatment, covariates=covariates, targets=targets
    )
    groups = found.assignments.set_index("slide_id")["group"]
    described = _describe(
        run_dir,
        table[found.model.columns],
        groups,
        features if input_kind == "tme" and tme is None else tme,
    )
    pictures = _plots(run_dir, found, table, patients, tests, survival, treatment, umap, seed)
    if slides and input_kind != "tme":
        from wsi.pipeline.subgroup_mosaic import group_mosaics

        pictures += [p.name for p in group_mosaics(found.assignments, features, slides, run_dir)]
    curve = found.stability
    report = {
        "k": found.model.k,
        "method": method,
        "input": input_kind,
        "encoder": found.model.encoder,
        "n_slides": len(table),
        "n_patients": len(patients),
        "slides_without_labels": int(len(raw) - len(table)),
        "group_sizes": {
            str(g): int(n)
            for g, n in found.assignments["group"].value_counts().sort_index().items()
        },
        "stability": {
            "criterion": "mean ARI between subsample clusterings (80 %)",
            "resamples": resamples,
            "tie_break": "silhouette",
            "k": curve["k"].tolist(),
            "mean_ari": curve["stability"].round(4).tolist(),
            "sd_ari": curve["stability_sd"].round(4).tolist(),
            "silhouette": curve["silhouette"].round(4).tolist(),
        },
        "dropped_constant_columns": found.dropped_columns,
        "tests": tests,
        "describe": described,
        "plots": pictures,
    }
    write_text_atomic(run_dir / "subgroups.json", json.dumps(report, indent=2, default=_plain))
    return SubgroupRun(discovery=found, patients=patients, tests=tests, out=run_dir)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def assign_subgroups_run(
    model: str | os.PathLike[str] | SubgroupModel,
    features: str | os.PathLike[str],
    out_csv: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Put the slides of ``features`` into a frozen model's groups (``slide_id, group,
    distance``), written to ``out_csv`` when given. ``features`` is the same kind of input
    discovery used; features of another encoder or width raise :class:`FeatureFileError`."""
    frozen = model if isinstance(model, SubgroupModel) else load_subgroup_model(model)
    if frozen.input_kind == "tme":
        table = inputs.read_tme_table(features)
    else:
        encoder, dim = inputs.feature_source(features)
        frozen.check_features(encoder, dim, str(features))
        if frozen.input_kind == "tile-clusters":
            table = inputs.tile_cluster_compositions(features, frozen.tile_centres)
        else:
            table = inputs.slide_embeddings(features)
    assigned = frozen.assign(table)
    if out_csv is not None:
        _write_csv(assigned, Path(out_csv))
    return assigned
