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
            "(add one with models.register_head)")
    return name


def _add_option_flags(
    group: argparse._ArgumentGroup, options: type, prefix: str = ""
) -> None:
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
        for f in dataclasses.fields(options) if "help" in f.metadata
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

    p = sub.add_parser("embed", help="tile + encode: features/{encoder}/*.h5, patches/, qc/, manifest")
    p.add_argument("slides", nargs="+", metavar="SLIDES", help="files, folders or globs")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--encoder", default=DEFAULT_ENCODER,
                   help="%(default)s (default, offline), resnet50_trunc, timm:<name>, hf-hub:<repo>, "
                        "or a name in models.known_encoders()")
    p.add_argument("--weights", default=None, help="local weights file (.safetensors/.pth/.bin)")
    p.add_argument("--batch-size", type=int, default=EmbedSettings.batch_size,
                   help="tiles per encoder batch (default %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="patch-reader processes (default: 0 for a CPU encoder on <= 4 cores, "
                        "one per 8 cores above; up to 8 for a GPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default=EmbedSettings.precision, choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype (auto: bf16/fp16 on GPU, bf16 on CPUs with native bf16)")
    p.add_argument("--redo", action="store_true", help="re-embed slides already done")
    _add_tiling_args(p)
    g = p.add_argument_group("Ray cluster (pip install \"wsi[ray]\")")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="one Ray task per slide; ADDRESS of the cluster (auto, host:6379, "
                        "ray://host:10001), none for a local Ray or RAY_ADDRESS")
    g.add_argument("--retries", type=int, default=2,
                   help="extra attempts of a slide task whose worker dies (default 2)")
    g.add_argument("--cpus-per-task", type=float, default=None,
                   help="CPUs per slide task (default 1; on GPU nodes their CPUs per GPU, <= 8)")
    g.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs per slide task (default 1 when the cluster has GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("train", help="cross-validate + fit a MIL head: metrics.json, model.pt")
    p.add_argument("--features", required=True, type=Path, help="OUT/features/<encoder> folder")
    p.add_argument("--labels", required=True, type=Path, help="CSV with slide_id[, patient_id]")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--model", default=DEFAULT_HEAD, type=_head_name, metavar="HEAD",
                   help="MIL head, a name in models.known_heads() (default %(default)s; built in: "
                        "abmil, clam_sb, transmil, meanpool); heads added with "
                        "models.register_head train from Python: wsi.train_run(..., arch=NAME)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--classify", action="append", default=[], metavar="COL",
                   help="a categorical target column (repeatable)")
    p.add_argument("--regress", nargs="+", action="extend", default=[], metavar="COL",
                   help="continuous target column(s)")
    p.add_argument("--survival", action="append", default=[], metavar="TIME_COL:EVENT_COL",
                   help="a survival target (repeatable): follow-up time and event (1 observed, "
                        "0 censored); the task is named after the time column")
    p.add_argument("--survival-loss", choices=["cox", "nll"], default="cox",
                   help="Cox partial likelihood or discrete-time NLL (default %(default)s)")
    p.add_argument("--survival-times", default=[12.0, 24.0, 36.0], type=_survival_times,
                   metavar="T,T,...",
                   help="times (time column's unit) of the time-dependent AUC (default 12,24,36)")
    p.add_argument("--risk-groups", choices=["median", "tertiles"], default="median",
                   help="risk-group cut-offs, fixed on each training fold (default %(default)s)")
    p.add_argument("--treatment", default=None, metavar="COL",
                   help="a two-arm column: test treatment x risk-group interaction (Cox, LR p)")
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

    p = sub.add_parser("demo", help="the whole pipeline on a built-in synthetic cohort, offline")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--slides", type=int, default=24, help="synthetic slides (default 24)")
    p.add_argument("--seed", type=int, default=0, help="cohort and training seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def _finish(rows: list[dict], out: Path) -> int:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    tiles = sum(int(r["n_tiles"]) for r in rows)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(rows)} slides ({summary}), {tiles} tiles -> {out}/manifest.csv")
    return EXIT_SOME_FAILED if counts.get("failed") else EXIT_OK


def cmd_tile(args: argparse.Namespace) -> int:
    """``wsi tile``: coords files, QC pictures and the manifest for each slide."""
    from wsi.pipeline.batch import find_slides
    from wsi.pipeline.tile import tile_archive

    options = _tiling_options(args)
    options.check()
    rows = tile_archive(
        find_slides(args.slides), args.out, options, skip_done=not args.redo,
        progress=not args.quiet, debug=args.debug,
    )
    return _finish(rows, args.out)


def cmd_embed(args: argparse.Namespace) -> int:
    """``wsi embed``: tile and encode each slide into features/{encoder}/{slide_id}.h5."""
    from wsi.pipeline.embed import embed_archive
    from wsi.pipeline.ray_runner import RayOptions

    options = _tiling_options(args)
    ray = RayOptions(
        address=None if args.ray == "local" else args.ray, retries=args.retries,
        cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
    )
    rows = embed_archive(
        args.slides, args.out, encoder=args.encoder, weights=args.weights, tiling=options,
        batch_size=args.batch_size, workers=args.workers,
        device=None if args.device == "auto" else args.device, precision=args.precision,
        progress=not args.quiet, debug=args.debug, skip_done=not args.redo,
        backend="local" if args.ray is None else "ray", ray=ray,
    )
    return _finish(rows, args.out)


def cmd_train(args: argparse.Namespace) -> int:
    """``wsi train``: cross-validation metrics, out-of-fold predictions, the final model.
    Exit 1 when unreadable feature files were left out (one line each)."""
    from models.training import TrainConfig
    from wsi.pipeline.train import train_run

    config = TrainConfig(
        epochs=args.epochs, max_tiles=args.max_tiles, seed=args.seed,
        survival_loss=args.survival_loss, risk_groups=args.risk_groups,
    )
    cv, cohort = train_run(
        args.features, args.labels, args.out, classify=args.classify, regress=args.regress,
        arch=args.model, folds=args.folds, config=config, progress=not args.quiet,
        survival=args.survival, treatment=args.treatment, survival_times=args.survival_times,
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

    frame = predict_run(args.checkpoint, args.features, args.out, attention_dir=args.attention,
                        progress=not args.quiet)
    failed = frame[frame["error"] != ""]
    for slide_id, error in zip(failed["slide_id"], failed["error"], strict=True):
        print(f"{slide_id}: failed: {error}")
    print(f"{len(frame) - len(failed)} slides predicted, {len(failed)} failed -> {args.out}")
    return EXIT_SOME_FAILED if len(failed) else EXIT_OK


def cmd_heatmap(args: argparse.Namespace) -> int:
    """``wsi heatmap``: attention pictures of one slide."""
    from wsi.pipeline.heatmap import heatmap_run

    for path in heatmap_run(args.checkpoint, args.slide, args.features, args.out,
                            slide_mpp=args.slide_mpp):
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
