"""The ``wsi`` command line: thin commands over the library's functions.

Exit codes: 0 when every slide succeeded (``ok`` or ``no_tissue``), 1 when some failed
(see the manifest), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from models.defaults import DEFAULT_ENCODER, DEFAULT_HEAD
from wsi.pipeline.settings import EmbedSettings

if TYPE_CHECKING:
    from wsi.options import TileOptions

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _survival_times(text: str) -> list[float]:
    """``--survival-times 12,24,36``: numbers separated by commas."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"numbers separated by commas, got {text!r}") from None


def _head_name(name: str) -> str:
    """``--model``: a name in the MIL head registry (loaded only when the flag is given)."""
    from models.mil import known_heads

    if name not in known_heads():
        raise argparse.ArgumentTypeError(
            f"unknown MIL head {name!r}; known: {', '.join(known_heads())} "
            "(add one with models.register_head)"
        )
    return name


def _add_option_flags(group: argparse._ArgumentGroup, options: type, prefix: str = "") -> None:
    """One flag per field of an options dataclass, its default and help written once there
    (``metadata``: ``help``, optional ``flag`` and ``type``); booleans get ``--no-`` forms."""
    for f in dataclasses.fields(options):
        if "help" not in f.metadata:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default
        kwargs: dict = {"dest": prefix + f.name, "default": default, "help": f.metadata["help"]}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = f.metadata.get("type", type(default))
            kwargs["metavar"] = "N" if kwargs["type"] is int else "X"
        group.add_argument(flag, **kwargs)


def _options_from_args(options: type, args: argparse.Namespace, prefix: str = "") -> dict:
    return {
        f.name: getattr(args, prefix + f.name)
        for f in dataclasses.fields(options)
        if "help" in f.metadata
    }


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    from wsi.options import TileOptions, TissueOptions

    _add_option_flags(p.add_argument_group("tiling"), TileOptions)
    _add_option_flags(p.add_argument_group("tissue detection"), TissueOptions, prefix="tissue_")


def _tiling_options(args: argparse.Namespace) -> TileOptions:
    """The :class:`TileOptions` the tiling and tissue flags describe."""
    from wsi.options import TileOptions, TissueOptions

    tissue = TissueOptions(**_options_from_args(TissueOptions, args, prefix="tissue_"))
    return TileOptions(**_options_from_args(TileOptions, args), tissue=tissue)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``wsi`` command."""
    parser = argparse.ArgumentParser(
        prog="wsi", description="Whole-slide images: tiles at exact µm, features, MIL heads."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tile", help="tissue detection + tile grid: patches/*.h5, qc/, manifest")
    p.add_argument("slides", nargs="+", metavar="SLIDES", help="files, folders or globs")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_tiling_args(p)
    p.add_argument("--redo", action="store_true", help="re-tile slides already tiled")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tile)

    p = sub.add_parser(
        "embed", help="tile + encode: features/{encoder}/*.h5, patches/, qc/, manifest"
    )
    p.add_argument("slides", nargs="+", metavar="SLIDES", help="files, folders or globs")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help="%(default)s (default, offline), resnet50_trunc, timm:<name>, hf-hub:<repo>, "
        "or a name in models.known_encoders()",
    )
    p.add_argument("--weights", default=None, help="local weights file (.safetensors/.pth/.bin)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=EmbedSettings.batch_size,
        help="tiles per encoder batch (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="patch-reader processes feeding the encoder in the main process (default: "
        "up to 8 for a GPU; a CPU encoder uses --lanes instead)",
    )
    p.add_argument(
        "--lanes",
        type=int,
        default=None,
        help="CPU encoding lanes: processes that each read and encode batches with a share "
        "of the threads (default: 2 for a light encoder, up to 10 M parameters, on a CPU "
        "unless --workers or --stain-normalize is given; 0 encodes in the main process)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument(
        "--precision",
        default=EmbedSettings.precision,
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype (auto: bf16/fp16 on GPU, bf16 on CPUs with native bf16)",
    )
    p.add_argument("--redo", action="store_true", help="re-embed slides already done")
    _add_tiling_args(p)
    g = p.add_argument_group('Ray cluster (pip install "wsi[ray]")')
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="one Ray task per slide; ADDRESS of the cluster (auto, host:6379, "
        "ray://host:10001), none for a local Ray or RAY_ADDRESS",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=2,
        help="extra attempts of a slide task whose worker dies (default 2)",
    )
    g.add_argument(
        "--cpus-per-task",
        type=float,
        default=None,
        help="CPUs per slide task (default 1; on GPU nodes their CPUs per GPU, <= 8)",
    )
    g.add_argument(
        "--gpus-per-task",
        type=float,
        default=None,
        help="GPUs per slide task (default 1 when the cluster has GPUs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--stain-normalize",
        choices=["macenko"],
        default=None,
        help="normalise H&E stains per slide before encoding (off by default)",
    )
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("train", help="cross-validate + fit a MIL head: metrics.json, model.pt")
    p.add_argument("--features", required=True, type=Path, help="OUT/features/<encoder> folder")
    p.add_argument("--labels", required=True, type=Path, help="CSV with slide_id[, patient_id]")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument(
        "--model",
        default=DEFAULT_HEAD,
        type=_head_name,
        metavar="HEAD",
        help="MIL head, a name in models.known_heads() (default %(default)s; built in: "
        "abmil, clam_sb, transmil, meanpool); heads added with "
        "models.register_head train from Python: wsi.train_run(..., arch=NAME)",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument(
        "--classify",
        action="append",
        default=[],
        metavar="COL",
        help="a categorical target column (repeatable)",
    )
    p.add_argument(
        "--regress",
        nargs="+",
        action="extend",
        default=[],
        metavar="COL",
        help="continuous target column(s)",
    )
    p.add_argument(
        "--survival",
        action="append",
        default=[],
        metavar="TIME_COL:EVENT_COL",
        help="a survival target (repeatable): follow-up time and event (1 observed, "
        "0 censored); the task is named after the time column",
    )
    p.add_argument(
        "--survival-loss",
        choices=["cox", "nll"],
        default="cox",
        help="Cox partial likelihood or discrete-time NLL (default %(default)s)",
    )
    p.add_argument(
        "--survival-times",
        default=[12.0, 24.0, 36.0],
        type=_survival_times,
        metavar="T,T,...",
        help="times (time column's unit) of the time-dependent AUC (default 12,24,36)",
    )
    p.add_argument(
        "--risk-groups",
        choices=["median", "tertiles"],
        default="median",
        help="risk-group cut-offs, fixed on each training fold (default %(default)s)",
    )
    p.add_argument(
        "--treatment",
        default=None,
        metavar="COL",
        help="a two-arm column: test treatment x risk-group interaction (Cox, LR p)",
    )
    p.add_argument("--epochs", type=int, default=40, help="maximum epochs (early stopping)")
    p.add_argument("--max-tiles", type=int, default=None, help="subsample bags while training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="apply a trained MIL head to a features folder")
    p.add_argument("--checkpoint", required=True, type=Path, help="RUN/model.pt")
    p.add_argument("--features", required=True, type=Path, help="OUT/features/<encoder> folder")
    p.add_argument("--out", required=True, type=Path, help="predictions CSV")
    p.add_argument("--attention", type=Path, default=None, help="folder for per-tile attention")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("heatmap", help="attention overlay, tile GeoJSON and top tiles of a slide")
    p.add_argument("--checkpoint", required=True, type=Path, help="RUN/model.pt")
    p.add_argument("--slide", required=True, type=Path, help="the slide file")
    p.add_argument("--features", required=True, type=Path, help="its features .h5")
    p.add_argument("--out", required=True, type=Path, help="PNG path")
    p.add_argument("--slide-mpp", type=float, default=None, help="level-0 µm/px override")
    p.set_defaults(func=cmd_heatmap)

    _add_export_parsers(sub)

    p = sub.add_parser("demo", help="the whole pipeline on a built-in synthetic cohort, offline")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--slides", type=int, default=24, help="synthetic slides (default 24)")
    p.add_argument("--seed", type=int, default=0, help="cohort and training seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    _add_tme_parsers(sub)
    _add_subgroups_parser(sub)
    p = sub.add_parser("encoders", help="every encoder name: feature width, input size, licence")
    p.set_defaults(func=cmd_encoders)
    return parser


def _add_tme_parsers(sub: argparse._SubParsersAction) -> None:
    """``wsi tme VERB``: one block per verb (tile classifier, profiles)."""
    tme = sub.add_parser("tme", help="tumour micro-environment: tile classifier, profiles")
    verbs = tme.add_subparsers(dest="tme_command", required=True, metavar="VERB")

    p = verbs.add_parser("train-classifier", help="tile tissue classifier from labelled tiles")
    p.add_argument(
        "--tiles",
        required=True,
        type=Path,
        help="folder with one subfolder per class, or a CSV path,label",
    )
    p.add_argument("--out", required=True, type=Path, help="classifier folder to write")
    p.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help="encoder of the slides' feature files (default %(default)s)",
    )
    p.add_argument("--weights", default=None, help="local encoder weights file")
    p.add_argument("--tile-mpp", type=float, default=0.5, help="µm/px of the tiles (default 0.5)")
    p.add_argument(
        "--roles",
        default="kather2019",
        help="class → role map: kather2019 (default), kather2016 or a CSV class,role / JSON file",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=0.05,
        help="HED stain scale jitter, ± fraction (default %(default)s; 0: none)",
    )
    p.add_argument(
        "--copies", type=int, default=2, help="jittered copies per tile (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tme_train_classifier)

    p = verbs.add_parser("classify-tiles", help="classify tile images: CSV path,class,prob_<class>")
    p.add_argument("--classifier", required=True, type=Path, help="folder of train-classifier")
    p.add_argument(
        "--tiles", required=True, type=Path, help="folder of tile images or a CSV path[,label]"
    )
    p.add_argument("--out", required=True, type=Path, help="CSV to write")
    p.add_argument(
        "--tile-mpp",
        type=float,
        default=None,
        help="µm/px of the tiles (default: the classifier's; another scale is refused)",
    )
    p.add_argument("--weights", default=None, help="local encoder weights file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tme_classify_tiles)

    p = verbs.add_parser("profile", help="TME profile per slide: DIR/tme.csv, maps, GeoJSON")
    p.add_argument("slides", nargs="+", metavar="SLIDES", help="files, folders or globs")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--classifier", required=True, type=Path, help="folder of train-classifier")
    p.add_argument(
        "--features",
        type=Path,
        action="append",
        default=None,
        help="folder of `wsi embed` feature files (repeatable; default: --out; "
        "slides without one are embedded into --out)",
    )
    p.add_argument(
        "--cohort-quantile",
        type=float,
        default=None,
        metavar="Q",
        help="phenotype thresholds at this quantile of the cohort's tumour grid cells "
        "(default: Park et al. 2022's 130 / 260 lymphocytes per mm²)",
    )
    p.add_argument(
        "--stroma-um",
        type=float,
        default=500.0,
        help="stroma within this distance of the tumour region counts as stromal "
        "(µm, default %(default)s)",
    )
    p.add_argument(
        "--inflamed-per-mm2",
        type=float,
        default=None,
        help="least intratumoral lymphocytes per mm² of an inflamed grid cell "
        "(default: Park et al. 2022's 130)",
    )
    p.add_argument(
        "--excluded-per-mm2",
        type=float,
        default=None,
        help="least stromal lymphocytes per mm² of an excluded grid cell "
        "(default: Park et al. 2022's 260)",
    )
    p.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="level-0 µm/px of slides to embed whose metadata has none",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="nuclei-detection processes (default 0: in this process)",
    )
    p.add_argument("--weights", default=None, help="local encoder weights file (for embedding)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="one Ray task per slide; ADDRESS of the cluster, none for a local Ray",
    )
    p.add_argument("--no-maps", action="store_true", help="no PNG maps or GeoJSON")
    p.add_argument("--redo", action="store_true", help="recompute slides already profiled")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tme_profile)


def _add_subgroups_parser(sub: argparse._SubParsersAction) -> None:
    """``wsi subgroups discover|assign``."""
    group = sub.add_parser(
        "subgroups",
        help="patient subgroups: discover (no outcome seen), "
        "test against outcomes, assign new slides",
    )
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("discover", help="groups chosen by stability; tests, plots, frozen model")
    p.add_argument(
        "--features",
        required=True,
        type=Path,
        help="OUT/features/<encoder> folder, or tme.csv with --input tme",
    )
    p.add_argument("--labels", required=True, type=Path, help="CSV with slide_id[, patient_id]")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--input",
        default="embeddings",
        choices=["embeddings", "tme", "tile-clusters"],
        help="what to cluster: mean-pooled features (default), a TME table, or "
        "tile-cluster compositions",
    )
    p.add_argument("--k", default="2..8", help="candidate k: 2..8 (default), or 2,3,4")
    p.add_argument("--method", default="kmeans", choices=["kmeans", "gmm", "agglomerative"])
    p.add_argument(
        "--survival",
        default=None,
        metavar="TIME:EVENT",
        help="survival columns: log-rank and Cox hazard ratios per group",
    )
    p.add_argument(
        "--treatment",
        default=None,
        metavar="COL",
        help="treatment column: group x treatment interaction (needs --survival)",
    )
    p.add_argument(
        "--covariates",
        nargs="+",
        default=[],
        metavar="COL",
        help="columns that adjust the Cox models",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        default=None,
        metavar="COL",
        help="label columns to test (default: every other column)",
    )
    p.add_argument("--tme", type=Path, default=None, help="tme.csv for per-group TME means")
    p.add_argument("--tile-clusters", type=int, default=8, help="tile clusters (default 8)")
    p.add_argument(
        "--resamples",
        type=int,
        default=20,
        help="subsamples per k for the stability curve (default 20)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-umap", action="store_true", help="skip the UMAP picture")
    p.add_argument(
        "--slides",
        nargs="+",
        default=[],
        metavar="SLIDES",
        help="slide files/folders: a mosaic of representative tiles per group",
    )
    p.set_defaults(func=cmd_subgroups_discover)
    p = verbs.add_parser("assign", help="put new slides into a frozen model's groups")
    p.add_argument("--model", required=True, type=Path, help="DIR/model.json of discover")
    p.add_argument(
        "--features",
        required=True,
        type=Path,
        help="features folder (or tme.csv) of the new slides",
    )
    p.add_argument("--out", required=True, type=Path, help="CSV: slide_id, group, distance")
    p.set_defaults(func=cmd_subgroups_assign)


def _finish(rows: list[dict], out: Path) -> int:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    tiles = sum(int(r["n_tiles"]) for r in rows)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(rows)} slides ({summary}), {tiles} tiles -> {out}/manifest.csv")
    return EXIT_SOME_FAILED if counts.get("failed") else EXIT_OK


def _add_export_parsers(sub: argparse._SubParsersAction) -> None:
    """``wsi export anndata|spatialdata|qupath|tiles``: our outputs for scanpy, SpatialData,
    QuPath and other tools."""
    group = sub.add_parser(
        "export", help="to scanpy/squidpy (.h5ad), QuPath (GeoJSON), tile images"
    )
    verbs = group.add_subparsers(dest="export_command", required=True, metavar="FORMAT")

    p = verbs.add_parser("anndata", help="features (+ TME, labels, attention) as an AnnData .h5ad")
    p.add_argument(
        "--features",
        required=True,
        nargs="+",
        type=Path,
        help="OUT/features/<encoder> folder(s) of one encoder",
    )
    p.add_argument("--out", required=True, type=Path, help="the .h5ad file")
    p.add_argument(
        "--level",
        default="tile",
        choices=["tile", "slide"],
        help="one row per tile (default) or per slide (mean-pooled features)",
    )
    p.add_argument("--tme", type=Path, default=None, help="a `wsi tme profile` output folder")
    p.add_argument("--labels", type=Path, default=None, help="labels CSV (slide_id, ...)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="RUN/model.pt: attention per tile, predictions per slide",
    )
    p.add_argument(
        "--slides",
        nargs="+",
        default=None,
        metavar="SLIDES",
        help="slide files, folders or globs for the thumbnails (default: the paths "
        "in the feature files' provenance)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export_anndata)

    p = verbs.add_parser(
        "spatialdata",
        help="tiles as shapes, thumbnails and features as a SpatialData .zarr (needs wsi[spatial])",
    )
    p.add_argument(
        "--features",
        required=True,
        nargs="+",
        type=Path,
        help="OUT/features/<encoder> folder(s) of one encoder",
    )
    p.add_argument("--out", required=True, type=Path, help="the .zarr folder")
    p.add_argument(
        "--shape",
        default="square",
        choices=["square", "circle"],
        help="tiles as squares (default) or circles one tile wide",
    )
    p.add_argument(
        "--thumbnail-px",
        type=int,
        default=1200,
        help="long side of each slide's image (default %(default)s px)",
    )
    p.add_argument("--tme", type=Path, default=None, help="a `wsi tme profile` output folder")
    p.add_argument("--labels", type=Path, default=None, help="labels CSV (slide_id, ...)")
    p.add_argument("--checkpoint", type=Path, default=None, help="RUN/model.pt: attention")
    p.add_argument(
        "--slides",
        nargs="+",
        default=None,
        metavar="SLIDES",
        help="slide files, folders or globs for the thumbnails",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export_spatialdata)

    p = verbs.add_parser("qupath", help="per slide a GeoJSON of tiles (and nuclei) for QuPath")
    p.add_argument(
        "--features",
        required=True,
        nargs="+",
        type=Path,
        help="OUT/features/<encoder> folder(s) of one encoder",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for {slide_id}.geojson")
    p.add_argument("--tme", type=Path, default=None, help="a `wsi tme profile` output folder")
    p.add_argument("--checkpoint", type=Path, default=None, help="RUN/model.pt: attention")
    p.add_argument(
        "--tile-labels",
        type=Path,
        default=None,
        help="per-tile CSV (slide_id, tile_id, ...), e.g. clusters from scanpy",
    )
    p.add_argument(
        "--class-column",
        default=None,
        metavar="COL",
        help="the --tile-labels column that classifies the tiles (default: role)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export_qupath)

    p = verbs.add_parser("tiles", help="tile images (PNG/JPEG) and an index CSV")
    p.add_argument("slides", nargs="+", metavar="SLIDES", help="files, folders or globs")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--format", default="png", choices=["png", "jpg"], dest="fmt")
    p.add_argument(
        "--max",
        type=int,
        default=None,
        dest="max_tiles",
        help="at most N tiles per slide (a seeded random choice)",
    )
    p.add_argument("--role", default=None, help="only tiles of this TME role (needs --tme)")
    p.add_argument("--tme", type=Path, default=None, help="a `wsi tme profile` output folder")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default %(default)s)")
    p.add_argument(
        "--coords",
        type=Path,
        default=None,
        help="OUT/patches or OUT/features/<encoder>: reuse their tiles (default: "
        "tile now with the tiling flags)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --max choice")
    _add_tiling_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export_tiles)


def cmd_export_anndata(args: argparse.Namespace) -> int:
    """``wsi export anndata``: one .h5ad of a features folder."""
    from wsi.export import export_anndata

    path = export_anndata(
        args.features,
        args.out,
        tme=args.tme,
        labels=args.labels,
        checkpoint=args.checkpoint,
        level=args.level,
        slides=args.slides,
        progress=not args.quiet,
    )
    print(f"-> {path}")
    return EXIT_OK


def cmd_export_spatialdata(args: argparse.Namespace) -> int:
    """``wsi export spatialdata``: one SpatialData .zarr of a features folder."""
    from wsi.export import export_spatialdata

    path = export_spatialdata(
        args.features,
        args.out,
        tme=args.tme,
        labels=args.labels,
        checkpoint=args.checkpoint,
        slides=args.slides,
        shape=args.shape,
        thumbnail_px=args.thumbnail_px,
        progress=not args.quiet,
    )
    print(f"-> {path}")
    return EXIT_OK


def cmd_export_qupath(args: argparse.Namespace) -> int:
    """``wsi export qupath``: {slide_id}.geojson per feature file."""
    from wsi.export import export_qupath

    paths = export_qupath(
        args.features,
        args.out,
        tme=args.tme,
        checkpoint=args.checkpoint,
        tile_labels=args.tile_labels,
        class_column=args.class_column,
        progress=not args.quiet,
    )
    print(f"{len(paths)} GeoJSON files -> {args.out}")
    return EXIT_OK


def cmd_export_tiles(args: argparse.Namespace) -> int:
    """``wsi export tiles``: tile images and OUT/index.csv; exit 1 when a slide failed."""
    from wsi.export import export_tiles

    result = export_tiles(
        args.slides,
        args.out,
        fmt=args.fmt,
        max_tiles=args.max_tiles,
        role=args.role,
        quality=args.quality,
        coords=args.coords,
        tme=args.tme,
        tiling=_tiling_options(args),
        seed=args.seed,
        progress=not args.quiet,
    )
    for slide_id, error in result.failed.items():
        print(f"{slide_id}: failed: {error}")
    print(
        f"{len(result.index)} tiles from {result.index['slide_id'].nunique()} slides "
        f"-> {result.index_path}"
    )
    return EXIT_SOME_FAILED if result.failed else EXIT_OK


def cmd_tile(args: argparse.Namespace) -> int:
    """``wsi tile``: coords files, QC pictures and the manifest for each slide."""
    from wsi.pipeline.batch import find_slides
    from wsi.pipeline.tile import tile_archive

    options = _tiling_options(args)
    options.check()
    rows = tile_archive(
        find_slides(args.slides),
        args.out,
        options,
        skip_done=not args.redo,
        progress=not args.quiet,
        debug=args.debug,
    )
    return _finish(rows, args.out)


def cmd_embed(args: argparse.Namespace) -> int:
    """``wsi embed``: tile and encode each slide into features/{encoder}/{slide_id}.h5."""
    from wsi.pipeline.embed import embed_archive
    from wsi.pipeline.ray_runner import RayOptions

    options = _tiling_options(args)
    ray = RayOptions(
        address=None if args.ray == "local" else args.ray,
        retries=args.retries,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
    )
    rows = embed_archive(
        args.slides,
        args.out,
        encoder=args.encoder,
        weights=args.weights,
        tiling=options,
        batch_size=args.batch_size,
        workers=args.workers,
        lanes=args.lanes,
        device=None if args.device == "auto" else args.device,
        precision=args.precision,
        progress=not args.quiet,
        debug=args.debug,
        skip_done=not args.redo,
        backend="local" if args.ray is None else "ray",
        ray=ray,
        stain=args.stain_normalize,
    )
    return _finish(rows, args.out)


def cmd_train(args: argparse.Namespace) -> int:
    """``wsi train``: cross-validation metrics, out-of-fold predictions, the final model.
    Exit 1 when unreadable feature files were left out (one line each)."""
    from models.training import TrainConfig
    from wsi.pipeline.train import train_run

    config = TrainConfig(
        epochs=args.epochs,
        max_tiles=args.max_tiles,
        seed=args.seed,
        survival_loss=args.survival_loss,
        risk_groups=args.risk_groups,
    )
    cv, cohort = train_run(
        args.features,
        args.labels,
        args.out,
        classify=args.classify,
        regress=args.regress,
        arch=args.model,
        folds=args.folds,
        config=config,
        progress=not args.quiet,
        survival=args.survival,
        treatment=args.treatment,
        survival_times=args.survival_times,
    )
    for slide_id, error in cohort.unreadable.items():
        print(f"{slide_id}: left out: {error}")
    print(cohort.report())
    print(cv.summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"-> {args.out}/metrics.json, predictions.csv, model.pt")
    return EXIT_SOME_FAILED if cohort.unreadable else EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """``wsi predict``: one row of predictions per slide of a features folder; a file that
    cannot be used is one printed line and a row with its ``error`` (exit 1)."""
    from wsi.pipeline.predict import predict_run

    frame = predict_run(
        args.checkpoint,
        args.features,
        args.out,
        attention_dir=args.attention,
        progress=not args.quiet,
    )
    failed = frame[frame["error"] != ""]
    for slide_id, error in zip(failed["slide_id"], failed["error"], strict=True):
        print(f"{slide_id}: failed: {error}")
    print(f"{len(frame) - len(failed)} slides predicted, {len(failed)} failed -> {args.out}")
    return EXIT_SOME_FAILED if len(failed) else EXIT_OK


def cmd_heatmap(args: argparse.Namespace) -> int:
    """``wsi heatmap``: attention pictures of one slide."""
    from wsi.pipeline.heatmap import heatmap_run

    for path in heatmap_run(
        args.checkpoint, args.slide, args.features, args.out, slide_mpp=args.slide_mpp
    ):
        print(path)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """``wsi demo``: the synthetic-cohort walkthrough, offline."""
    from wsi.errors import InvalidParameterError
    from wsi.pipeline.demo import run_demo

    if args.slides < 9:
        raise InvalidParameterError(
            "--slides must be at least 9: cross-validation needs 2 patients per tumour type"
        )
    result = run_demo(args.out, n_slides=args.slides, seed=args.seed, progress=not args.quiet)
    print(result.summary())
    return EXIT_OK


def cmd_tme_profile(args: argparse.Namespace) -> int:
    """``wsi tme profile``: one TME profile per slide into DIR/tme.csv (exit 1 when a slide
    failed: see DIR/tme/manifest.csv)."""
    from wsi.pipeline.tme import profile_run, profile_settings

    settings = profile_settings(
        stroma_um=args.stroma_um,
        cohort_quantile=args.cohort_quantile,
        workers=args.workers,
        inflamed_per_mm2=args.inflamed_per_mm2,
        excluded_per_mm2=args.excluded_per_mm2,
        slide_mpp=args.slide_mpp,
        weights=args.weights,
        device=None if args.device == "auto" else args.device,
        maps=not args.no_maps,
        skip_done=not args.redo,
        progress=not args.quiet,
        debug=args.debug,
        backend="local" if args.ray is None else "ray",
        ray_address=None if args.ray in (None, "local") else args.ray,
    )
    table = profile_run(
        args.slides, args.out, classifier=args.classifier, features=args.features, settings=settings
    )
    manifest = _manifest_rows(args.out / "tme" / "manifest.csv")
    failed = [r for r in manifest if r["status"] == "failed"]
    print(f"{len(table)} slides profiled, {len(failed)} failed -> {args.out}/tme.csv")
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _manifest_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a manifest CSV."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def cmd_tme_train_classifier(args: argparse.Namespace) -> int:
    """``wsi tme train-classifier``: fit and save a tile tissue classifier."""
    from wsi.tme.classifier import train_tile_classifier

    classifier = train_tile_classifier(
        args.tiles,
        encoder=args.encoder,
        tile_mpp=args.tile_mpp,
        roles=args.roles,
        weights=args.weights,
        jitter=args.jitter,
        copies=args.copies,
        seed=args.seed,
        device=None if args.device == "auto" else args.device,
        progress=not args.quiet,
    )
    classifier.save(args.out)
    print(classifier)
    copies = classifier.metadata["copies"]
    for name, count in classifier.metadata["tiles_per_class"].items():
        jittered = f" (+{count * copies} HED-jittered)" if copies else ""
        print(f"  {name}: {count} tiles{jittered} -> {classifier.roles[name]}")
    print(f"-> {args.out}")
    return EXIT_OK


def cmd_tme_classify_tiles(args: argparse.Namespace) -> int:
    """``wsi tme classify-tiles``: predicted class and probabilities per tile image."""
    from wsi.tme.classifier import TileClassifier, classify_tiles, tile_accuracy, write_table

    table = classify_tiles(
        TileClassifier.load(args.classifier),
        args.tiles,
        tile_mpp=args.tile_mpp,
        weights=args.weights,
        device=None if args.device == "auto" else args.device,
        progress=not args.quiet,
    )
    write_table(table, args.out)
    score = tile_accuracy(table)
    if score:
        print(
            f"against the labels: accuracy {score['accuracy']:.3f}, "
            f"balanced accuracy {score['balanced_accuracy']:.3f} ({score['n']} tiles)"
        )
    print(f"{len(table)} tiles classified -> {args.out}")
    return EXIT_OK


def cmd_subgroups_discover(args: argparse.Namespace) -> int:
    """``wsi subgroups discover``: the subgroups output folder."""
    from wsi.errors import InvalidParameterError
    from wsi.pipeline.subgroups import discover_subgroups_run
    from wsi.subgroups.discovery import parse_k

    survival = None
    if args.survival is not None:
        if args.survival.count(":") != 1:
            raise InvalidParameterError(f"--survival {args.survival!r}: write TIME_COL:EVENT_COL")
        survival = tuple(args.survival.split(":"))
    run = discover_subgroups_run(
        args.features,
        args.labels,
        args.out,
        input_kind=args.input,
        k=parse_k(args.k),
        method=args.method,
        survival=survival,
        treatment=args.treatment,
        covariates=args.covariates,
        targets=args.targets,
        tme=args.tme,
        tile_clusters=args.tile_clusters,
        resamples=args.resamples,
        seed=args.seed,
        umap=not args.no_umap,
        slides=args.slides,
    )
    print(run.summary())
    print(f"-> {args.out}/subgroups.csv, subgroups.json, model.json")
    return EXIT_OK


def cmd_subgroups_assign(args: argparse.Namespace) -> int:
    """``wsi subgroups assign``: frozen groups for new slides."""
    from wsi.pipeline.subgroups import assign_subgroups_run

    frame = assign_subgroups_run(args.model, args.features, args.out)
    sizes = ", ".join(
        f"group {g}: {n}" for g, n in frame["group"].value_counts().sort_index().items()
    )
    print(f"{len(frame)} slides assigned ({sizes}) -> {args.out}")
    return EXIT_OK


def cmd_encoders(args: argparse.Namespace) -> int:
    """``wsi encoders``: the encoder names with width, input size and licence."""
    from models.encoders import known_encoders
    from models.foundation import cards_table, encoder_cards

    print(cards_table(encoder_cards(known_encoders())))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsi`` console script."""
    from wsi.errors import BackendUnavailableError, InvalidParameterError, ModelsError, WsiError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except InvalidParameterError as exc:
        print(f"wsi {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (WsiError, ModelsError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"wsi {args.command}: error: {exc}", file=sys.stderr)
        usage = isinstance(exc, ValueError | ModelsError | BackendUnavailableError)
        return EXIT_USAGE if usage else EXIT_SOME_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
