"""A real-texture check of the MIL heads: slides composed from labelled CRC tiles.

How the slides are composed: the 32 real H&E tiles of ../shared/data/crc_val_he_7k_32
(4 per class, 0.5 µm/px) are embedded with the offline EfficientNet-Lite0 in their 8
rotations/flips. The 4 tiles of each class are split into two halves, and each "patient"
draws only from one half, so the two cross-validation folds (grouped by half) never
share a tile. A bag is 30 tiles: tumour slides hold 20-40 % TUM tiles, the others none;
every bag holds a random 0-50 % of LYM tiles (its immune score) and stroma, muscle,
fat, mucus, debris or normal mucosa for the rest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import models
from tests.conftest import shared_file

BACKGROUND = ("ADI", "DEB", "MUC", "MUS", "NORM", "STR")
BAGS_PER_HALF = 40
TILES_PER_BAG = 30


def _embedded_tiles() -> dict[tuple[str, int], np.ndarray]:
    folder = shared_file("crc_val_he_7k_32")
    labels = pd.read_csv(folder / "labels.csv")
    encoder = models.load_encoder("efficientnet_lite0", device="cpu")
    pool: dict[tuple[str, int], list[np.ndarray]] = {}
    for label, group in labels.groupby("label"):
        for i, name in enumerate(sorted(group["filename"])):
            rgb = np.asarray(Image.open(folder / name).convert("RGB"))
            views = [np.rot90(v, k) for v in (rgb, rgb[:, ::-1]) for k in range(4)]
            feats = encoder(np.ascontiguousarray(np.stack(views))).numpy()
            pool.setdefault((label, i % 2), []).append(feats)
    return {key: np.concatenate(value) for key, value in pool.items()}


def _cohort(pool, rng):
    bags, rows = [], []
    for half in (0, 1):
        for b in range(BAGS_PER_HALF):
            tumour = b % 2 == 1
            n_tum = int(rng.integers(6, 13)) if tumour else 0
            n_lym = int(rng.integers(0, 16))
            kinds = ["TUM"] * n_tum + ["LYM"] * n_lym
            kinds += list(rng.choice(BACKGROUND, TILES_PER_BAG - len(kinds)))
            bag = np.stack([pool[(k, half)][rng.integers(len(pool[(k, half)]))] for k in kinds])
            bags.append(bag[rng.permutation(len(bag))])
            rows.append(
                {
                    "slide_id": f"h{half}_{b:02d}",
                    "patient_id": f"half{half}",
                    "tumour": "yes" if tumour else "no",
                    "lym_fraction": n_lym / TILES_PER_BAG,
                }
            )
    return bags, pd.DataFrame(rows)


@pytest.mark.slow
def test_abmil_on_composed_real_textures():
    pool = _embedded_tiles()
    bags, labels = _cohort(pool, np.random.default_rng(0))
    config = models.TrainConfig(epochs=30, lr=5e-4, seed=0)
    cv = models.cross_validate(
        bags,
        labels,
        classify=["tumour"],
        regress=["lym_fraction"],
        folds=2,
        config=config,
        progress=False,
    )
    tasks = cv.metrics["tasks"]
    print(cv.summary().to_string(index=False))
    # Measured (seed 0): tumour AUC 0.85 (folds 0.70 and 1.00: two TUM tiles per half are
    # little to generalise from), lymphocyte fraction Spearman 0.99, MAE 0.023.
    assert tasks["tumour"]["auc_macro"] >= 0.75
    assert tasks["lym_fraction"]["spearman"] >= 0.9
    assert tasks["lym_fraction"]["mae"] <= 0.05
