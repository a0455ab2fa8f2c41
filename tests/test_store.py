import json

import h5py
import numpy as np
import pytest

from wsi.errors import FeatureFileError
from wsi.store.h5 import FeatureBag, FeatureWriter, read_provenance, read_tile_file, write_coords

ATTRS = {"patch_size": 448, "patch_level": 0, "downsample": [1.0, 1.0], "name": "s"}


def test_coords_file_layout(tmp_path):
    coords = np.array([[0, 0], [448, 896]], np.int64)
    path = write_coords(tmp_path / "p" / "s.h5", coords, ATTRS, {"a": 1}, np.array([1.0, 0.6]))
    with h5py.File(path) as f:  # plain h5py, as CLAM reads it
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (2, 2)
        assert f["coords"].attrs["patch_size"] == 448
        assert list(f["coords"].attrs["downsample"]) == [1.0, 1.0]
        assert json.loads(f.attrs["provenance"]) == {"a": 1}
    back = read_tile_file(path)
    assert np.array_equal(back.coords, coords) and back.features is None
    assert back.tissue_fraction.tolist() == pytest.approx([1.0, 0.6])
    assert not list(tmp_path.glob("p/.*"))  # no temporary file left


def test_empty_coords_file_is_valid(tmp_path):
    path = write_coords(tmp_path / "e.h5", np.zeros((0, 2)), ATTRS, {})
    assert read_tile_file(path).coords.shape == (0, 2)


def test_feature_writer_streams_rows_and_renames(tmp_path):
    n, d = 1000, 16
    coords = np.arange(2 * n).reshape(n, 2)
    rows = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    final = tmp_path / "f" / "s.h5"
    with FeatureWriter(final, coords, ATTRS, {"k": "v"}, d, {"encoder": "enc"}) as w:
        for start in range(0, n, 300):
            w.write(start, rows[start : start + 300])
            assert not final.exists()  # only the temporary name while writing
        w.commit()
    with h5py.File(final) as f:
        assert f["features"].dtype == np.float32 and f["features"].shape == (n, d)
        assert f["features"].chunks[0] >= 256
        assert f["features"].attrs["encoder"] == "enc" and f["features"].attrs["feature_dim"] == d
    back = read_tile_file(final)
    assert np.array_equal(back.features, rows) and np.array_equal(back.coords, coords)
    bag = FeatureBag(final)
    assert bag.shape == (n, d) and bag.encoder == "enc"
    assert np.array_equal(bag.load(np.array([5, 2])), rows[[2, 5]])
    assert read_provenance(final) == {"k": "v"}


def test_failed_write_leaves_nothing(tmp_path):
    final = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), FeatureWriter(final, np.zeros((4, 2)), ATTRS, {}, 3, {}) as w:
        w.write(0, np.ones((2, 3)))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with FeatureWriter(final, np.zeros((4, 2)), ATTRS, {}, 3, {}) as w:
        w.write(0, np.ones((2, 3)))
        with pytest.raises(FeatureFileError, match="2 of 4"):
            w.commit()
    assert not final.exists()


def test_truncated_and_wrong_files(tmp_path):
    path = write_coords(tmp_path / "s.h5", np.zeros((10, 2)), ATTRS, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FeatureFileError, match="s.h5: unreadable HDF5 file"):
        read_tile_file(path)
    assert read_provenance(path) is None
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["coords"] = np.zeros((3, 3))
    with pytest.raises(FeatureFileError, match=r"expected \(N, 2\)"):
        read_tile_file(tmp_path / "w.h5")
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["coords"] = np.zeros((3, 2))
        f["features"] = np.zeros((4, 8))
    with pytest.raises(FeatureFileError, match="re-run"):
        read_tile_file(tmp_path / "m.h5")


def test_reprs_are_one_line_with_name_size_and_scale(tmp_path):
    attrs = {**ATTRS, "target_mpp": 0.5}
    coords = np.zeros((3, 2), np.int64)
    with FeatureWriter(tmp_path / "s.h5", coords, attrs, {}, 4, {"encoder": "enc"}) as w:
        w.write(0, np.ones((2, 4)))
        assert repr(w) == "<FeatureWriter 's.h5' 2 of 3 rows × 4 written, open>"
        w.write(2, np.ones((1, 4)))
        w.commit()
    assert repr(FeatureBag(tmp_path / "s.h5")) == "<FeatureBag 's.h5' 3 tiles × 4 (enc)>"
    back = read_tile_file(tmp_path / "s.h5")
    assert (
        repr(back) == "<TileFile 's.h5' 3 tiles, features 3 × 4 (enc), 448 px tiles at 0.5 µm/px>"
    )
    coords_only = read_tile_file(write_coords(tmp_path / "c.h5", coords, ATTRS, {}))
    assert repr(coords_only) == "<TileFile 'c.h5' 3 tiles, coords only, 448 px tiles>"
    for obj in (back, coords_only):
        assert "\n" not in repr(obj)
