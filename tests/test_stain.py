"""Macenko stain normalisation: pinned to torchstain, recovers known stains, in the pipeline."""

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from models.stain import REFERENCE, StainFit, fit_macenko, normalise_macenko
from tests import tiny_encoders
from tests.conftest import SHARED_DATA, shared_file
from wsi.errors import InvalidParameterError
from wsi.pipeline.embed import embed_archive

tiny_encoders.register()

TILES = [
    "NCT-CRC-HE-100K_LYM-AATTSRNN.png",
    "NCT-CRC-HE-100K_NORM-AAAWMSFI.png",
    "CRC-VAL-HE-7K_shaik-val7k_adi.png",
]


def _tile(name: str) -> np.ndarray:
    return np.array(Image.open(shared_file(f"nct_crc_he_27/{name}")).convert("RGB"))  # writable


@pytest.mark.parametrize("name", TILES)
def test_same_as_torchstain_on_real_tiles(name):
    torchstain = pytest.importorskip("torchstain.numpy.normalizers.macenko")
    rgb = _tile(name)
    expected, _, _ = torchstain.NumpyMacenkoNormalizer().normalize(rgb, stains=False)
    got = normalise_macenko(torch.from_numpy(rgb)[None], fit_macenko(rgb))[0].numpy()
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 vs float64 rounding


def _mixed(he: np.ndarray, n: int = 20_000, seed: int = 0) -> np.ndarray:
    """RGB pixels made from stain vectors ``he`` (3 x 2 OD) with random concentrations."""
    c = np.random.default_rng(seed).gamma(2.0, 0.4, (2, n))
    return np.clip(240 * np.exp(-(he @ c)).T - 1, 0, 255).round().astype(np.uint8)


def test_recovers_the_stain_vectors_it_was_made_with():
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    he = he / np.linalg.norm(he, axis=0)
    fit = fit_macenko(_mixed(he))
    got = np.array(fit.stain_matrix)
    cosines = (got * he).sum(axis=0) / np.linalg.norm(got, axis=0)
    assert cosines.min() > 0.99  # haematoxylin first, eosin second, each within ~8°


def test_a_slide_normalised_to_its_own_fit_is_unchanged_and_batches_are_tilewise():
    he = np.array(REFERENCE.stain_matrix)
    pixels = _mixed(he, n=4 * 32 * 32).reshape(4, 32, 32, 3)
    fit = fit_macenko(pixels)
    same = normalise_macenko(torch.from_numpy(pixels), fit, target=fit).numpy().astype(int)
    # the OD formula's +1 (as in torchstain) comes back as up to +1 grey level, truncated
    # from float32 (+2 where the test pixels were clipped at 0)
    shift = same - pixels
    assert shift.min() >= 0 and shift.max() <= 2 and shift.mean() < 1
    batch = normalise_macenko(torch.from_numpy(pixels), fit)
    one = torch.cat([normalise_macenko(torch.from_numpy(pixels[i : i + 1]), fit) for i in range(4)])
    assert torch.equal(batch, one)
    with pytest.raises(ValueError, match="stained pixels"):
        fit_macenko(np.full((8, 8, 3), 250, np.uint8))


def test_pipeline_normalises_records_and_re_embeds(tmp_path):
    crc = SHARED_DATA / "nct_crc_he_27"
    if not crc.is_dir():
        pytest.skip(f"real data not available: {crc}")
    # a slide made of real H&E tiles (a flat PNG, 0.5 µm/px): 3 x 2 tiles of 224 px
    tiles = [_tile(n) for n in TILES * 2]
    mosaic = np.concatenate([np.concatenate(tiles[:3], 1), np.concatenate(tiles[3:], 1)], 0)
    slide = tmp_path / "he.png"
    Image.fromarray(mosaic).save(slide, dpi=(25400 / 0.5, 25400 / 0.5))
    out = tmp_path / "out"
    kwargs = dict(encoder="tiny", workers=0, progress=False)
    assert embed_archive([slide], out, **kwargs)[0]["status"] == "ok"
    path = out / "features" / "tiny" / "he.h5"
    with h5py.File(path) as f:
        plain = f["features"][:]
        assert "stain" not in json.loads(f.attrs["provenance"])
    rows = embed_archive([slide], out, stain="macenko", **kwargs)
    assert rows[0]["status"] == "ok"  # a different reuse key: embedded again
    with h5py.File(path) as f:
        normalised = f["features"][:]
        stain = json.loads(f.attrs["provenance"])["stain"]
    assert plain.shape == normalised.shape and np.abs(plain - normalised).max() > 1e-3
    assert stain["method"] == "macenko" and len(stain["stain_matrix"]) == 3
    with pytest.raises(InvalidParameterError, match="macenko"):
        embed_archive([slide], out, stain="reinhard", **kwargs)


def test_stain_fit_repr_and_dict():
    fit = StainFit(REFERENCE.stain_matrix, (1.0, 2.0), 5)
    assert "H=(0.563" in repr(fit) and fit.as_dict()["max_concentration"] == [1.0, 2.0]
