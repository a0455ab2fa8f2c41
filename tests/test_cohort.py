import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from wsi.cohort import BagSequence, load_cohort, read_labels
from wsi.errors import FeatureFileError, LabelsError
from wsi.store.h5 import FeatureWriter

ATTRS = {"patch_size": 224, "patch_level": 0, "downsample": [1.0, 1.0], "name": "s"}


def write_bag(folder, slide_id, n, dim=8, encoder="enc", seed=0):
    """A features file of n rows of seeded noise; returns the rows."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    coords = np.stack([np.arange(n) * 224, np.zeros(n)], axis=1)
    path = folder / f"{slide_id}.h5"
    with FeatureWriter(path, coords, ATTRS, {}, dim, {"encoder": encoder}) as w:
        w.write(0, rows)
        w.commit()
    return rows


def write_csv(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def cohort_dir(tmp_path):
    """Features for s1..s4 (3, 5, 0, 7 tiles) and x9 (unlabelled); labels for s1..s4 and m1, m2."""
    feats = tmp_path / "features" / "enc"
    feats.mkdir(parents=True)
    rows = {
        sid: write_bag(feats, sid, n, seed=i)
        for i, (sid, n) in enumerate([("s1", 3), ("s2", 5), ("s3", 0), ("s4", 7), ("x9", 2)])
    }
    labels = write_csv(
        tmp_path / "labels.csv",
        "slide_id,patient_id,subtype,til\n"
        "s1,p1,TUM,0.1\ns2,p1,NORM,\nm1,p2,TUM,0.3\ns3,p3,TUM,0.2\ns4,p4,,0.9\nm2,p5,NORM,0.5\n",
    )
    return feats, labels, rows


# --------------------------------------------------------------------------- labels


def test_bom_semicolons_whitespace_and_numeric_ids(tmp_path):
    path = write_csv(
        tmp_path / "l.csv",
        "slide_id ; patient_id;grade;score;subtype\n 007 ;0012;1;0,5; TUM \n008;0012;2;1,25;NA\n",
        encoding="utf-8-sig",
    )
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    df = read_labels(path)
    assert list(df.columns) == ["slide_id", "patient_id", "grade", "score", "subtype"]
    assert df["slide_id"].tolist() == ["007", "008"]  # leading zeros kept, spaces stripped
    assert df["patient_id"].tolist() == ["0012", "0012"]
    assert df["grade"].tolist() == [1, 2]
    assert df["score"].tolist() == [0.5, 1.25]  # decimal commas of a ';' file
    assert df["subtype"].iloc[0] == "TUM" and pd.isna(df["subtype"].iloc[1])


def test_tab_separated_and_empty_cells_are_unknown(tmp_path):
    path = write_csv(tmp_path / "l.tsv", "slide_id\tstage\ttil\na\tII\t0.25\nb\t\t\nc\tIII\t#N/A\n")
    df = read_labels(path)
    assert df["stage"].tolist()[0::2] == ["II", "III"] and pd.isna(df["stage"].iloc[1])
    assert df["til"].dtype == np.float64
    assert np.isnan(df["til"].to_numpy()).tolist() == [False, True, True]


def test_identical_duplicate_rows_fold_conflicting_ones_fail(tmp_path):
    same = write_csv(tmp_path / "same.csv", "slide_id,y\na,1\nb,0\na ,1\n,\n")
    assert read_labels(same)["slide_id"].tolist() == ["a", "b"]
    clash = write_csv(tmp_path / "clash.csv", "slide_id,y\na,1\nb,0\na,0\nb,1\nc,1\n")
    with pytest.raises(LabelsError, match=r"clash\.csv.*'?a'?, b.*several rows"):
        read_labels(clash)


def test_missing_slide_id_column_names_file_columns_and_fix(tmp_path):
    path = write_csv(tmp_path / "l.csv", "Slide ID,subtype\na,TUM\n")
    with pytest.raises(LabelsError) as err:
        read_labels(path)
    message = str(err.value)
    assert "l.csv" in message and "['Slide ID', 'subtype']" in message
    assert "did you mean 'Slide ID'" in message and "Name the column" in message


def test_row_without_slide_id_missing_file_and_not_utf8(tmp_path):
    path = write_csv(tmp_path / "l.csv", "slide_id,y\na,1\n,0\n")
    with pytest.raises(
        LabelsError, match=r"1 row\(s\) have values but no slide_id \(data rows \[2\]"
    ):
        read_labels(path)
    with pytest.raises(LabelsError, match="labels file not found"):
        read_labels(tmp_path / "nope.csv")
    latin1 = write_csv(tmp_path / "latin1.csv", "slide_id,site\na,Tumör\n", encoding="latin-1")
    with pytest.raises(LabelsError, match=r"latin1\.csv: not UTF-8 .*save the CSV as UTF-8"):
        read_labels(latin1)


def test_dataframe_labels_with_slide_id_index_and_int_ids(tmp_path):
    feats = tmp_path / "f"
    write_bag(feats, "7", 2)
    write_bag(feats, "8", 3)
    frame = pd.DataFrame({"y": [1.0, None]}, index=pd.Index([7, 8], name="slide_id"))
    cohort = load_cohort(feats, frame, targets=["y"])
    assert cohort.slide_ids == ["7", "8"] and cohort.bags.n_tiles.tolist() == [2, 3]
    assert cohort.labels["y"].tolist()[0] == 1.0 and np.isnan(cohort.labels["y"].iloc[1])


# --------------------------------------------------------------------------- cohort


def test_cohort_matches_reports_and_excludes(cohort_dir):
    feats, labels, rows = cohort_dir
    with pytest.warns(UserWarning, match="2 labelled slides have no features") as caught:
        cohort = load_cohort(feats, labels, targets=["subtype", "til"])
    assert len(caught) == 1
    assert cohort.slide_ids == ["s1", "s2", "s4"]  # labels order; s3 has 0 tiles
    assert cohort.labels["slide_id"].tolist() == cohort.slide_ids
    assert cohort.labels.index.tolist() == [0, 1, 2]
    assert cohort.missing_features == ["m1", "m2"]
    assert cohort.unlabelled == ["x9"]
    assert cohort.empty_bags == ["s3"]
    assert cohort.feature_dim == 8 and cohort.encoder == "enc"
    assert cohort.bags.n_tiles.tolist() == [3, 5, 7]
    for i, sid in enumerate(cohort.slide_ids):
        assert np.array_equal(cohort.bags[i], rows[sid])
    report = cohort.report()
    assert report.startswith("3 slides with labels and features (15 tiles, 8-d, encoder enc)")
    assert "2 labelled slides have no features in" in report and "(m1, m2)" in report
    assert "1 feature file has no labels (x9)" in report
    assert "1 labelled slide has 0 tiles and is left out (s3)" in report
    assert "'subtype' known for 2 of 3" in report and "'til' known for 2 of 3" in report
    assert f"bags cached in RAM ({3 * 5 * 8 * 4 / 2**30:.2f} GiB)" in report
    assert repr(cohort) == (  # one line: slides, tiles × dim, encoder, targets, left out
        "<Cohort 3 slides, 15 tiles × 8 (enc), bags in RAM, targets subtype, til, 4 left out>"
    )
    assert repr(cohort.bags) == "<BagSequence 3 bags, 15 tiles × 8, 480 B in RAM>"


def test_report_lists_first_names_then_count(tmp_path):
    feats = tmp_path / "f"
    feats.mkdir()
    write_bag(feats, "a", 2)
    ids = [f"m{i:02d}" for i in range(8)]
    frame = pd.DataFrame({"slide_id": ["a", *ids]})
    with pytest.warns(UserWarning):
        cohort = load_cohort(feats, frame)
    assert "8 labelled slides have no features" in cohort.report()
    assert "(m00, m01, m02, m03, m04, … (+3 more))" in cohort.report()


def test_no_warning_when_everything_matches(tmp_path):
    feats = tmp_path / "f"
    feats.mkdir()
    write_bag(feats, "a", 2)
    write_bag(feats, "b", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort = load_cohort(feats, pd.DataFrame({"slide_id": ["b", "a"], "y": [1, 0]}))
    assert cohort.slide_ids == ["b", "a"] and cohort.bags.n_tiles.tolist() == [1, 2]


def test_missing_target_lists_columns_present(cohort_dir):
    feats, labels, _ = cohort_dir
    with pytest.raises(LabelsError) as err:
        load_cohort(feats, labels, targets=["subtype", "grade"])
    message = str(err.value)
    assert "['grade']" in message
    assert "['slide_id', 'patient_id', 'subtype', 'til']" in message


def test_dim_mismatch_names_a_file_of_each_dim(tmp_path):
    feats = tmp_path / "f"
    feats.mkdir()
    write_bag(feats, "a", 2, dim=8)
    write_bag(feats, "b", 2, dim=8)
    write_bag(feats, "c", 2, dim=16)
    with pytest.raises(FeatureFileError) as err:
        load_cohort(feats, pd.DataFrame({"slide_id": ["a", "b", "c"]}))
    message = str(err.value)
    assert "different feature widths" in message
    assert "8 (a.h5 and 1 more)" in message and "16 (c.h5)" in message


def test_encoder_mismatch(tmp_path):
    feats = tmp_path / "f"
    feats.mkdir()
    write_bag(feats, "a", 2, encoder="resnet50_trunc")
    write_bag(feats, "b", 2, encoder="uni")
    with pytest.raises(FeatureFileError, match=r"different encoders: resnet50_trunc \(a\.h5\)"):
        load_cohort(feats, pd.DataFrame({"slide_id": ["a", "b"]}))


def test_folder_errors_point_to_the_encoder_subfolder(tmp_path):
    write_bag(tmp_path / "features" / "enc", "a", 2)
    with pytest.raises(FeatureFileError, match=r"subfolders with \.h5 files \['enc'\]"):
        load_cohort(tmp_path / "features", pd.DataFrame({"slide_id": ["a"]}))
    with pytest.raises(FeatureFileError, match="features folder not found"):
        load_cohort(tmp_path / "nope", pd.DataFrame({"slide_id": ["a"]}))


def test_no_overlap_is_an_error_with_the_report(tmp_path):
    feats = tmp_path / "f"
    feats.mkdir()
    write_bag(feats, "a.svs", 2)
    with pytest.warns(UserWarning), pytest.raises(LabelsError, match="no slide has both"):
        load_cohort(feats, pd.DataFrame({"slide_id": ["a"]}))


# --------------------------------------------------------------------------- bags


def test_cache_and_stream_return_identical_arrays(cohort_dir):
    feats, labels, rows = cohort_dir
    with pytest.warns(UserWarning):
        cached = load_cohort(feats, labels, cache=True)
    with pytest.warns(UserWarning):
        streamed = load_cohort(feats, labels, cache=False)
    assert cached.bags.cached and not streamed.bags.cached
    assert "bags streamed from HDF5" in streamed.report()
    assert repr(streamed.bags) == "<BagSequence 3 bags, 15 tiles × 8, 480 B streamed>"
    assert "\n" not in repr(streamed) and "bags streamed" in repr(streamed)
    for i in range(len(cached)):
        a, b = cached.bags[i], streamed.bags[i]
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.array_equal(a, b)
    subset = np.array([4, 0, 2])
    assert np.array_equal(streamed.bags.load(2, subset), rows["s4"][[0, 2, 4]])
    assert np.array_equal(cached.bags.load(2, subset), rows["s4"][[0, 2, 4]])
    assert streamed.bags.load(0, np.array([], np.int64)).shape == (0, 8)
    with pytest.raises(IndexError, match="distinct tile indices"):
        streamed.bags.load(0, np.array([1, 1]))


def test_auto_cache_follows_size_known_from_shapes(cohort_dir):
    feats, labels, _ = cohort_dir
    nbytes = (3 + 5 + 7) * 8 * 4
    with pytest.warns(UserWarning):
        under = load_cohort(feats, labels, max_cache_bytes=nbytes)
    with pytest.warns(UserWarning):
        over = load_cohort(feats, labels, max_cache_bytes=nbytes - 1)
    assert under.bags.nbytes == over.bags.nbytes == nbytes
    assert under.bags.cached and not over.bags.cached
    assert f"> cache limit {(nbytes - 1) / 2**30:.2f} GiB" in over.report()


def test_streamed_sequence_pickles_and_feeds_dataloader_workers(cohort_dir):
    feats, labels, rows = cohort_dir
    with pytest.warns(UserWarning):
        bags = load_cohort(feats, labels, cache=False).bags
    back = pickle.loads(pickle.dumps(bags))
    assert isinstance(back, BagSequence) and not back.cached
    assert np.array_equal(back[1], rows["s2"])
    loader = DataLoader(bags, batch_size=None, num_workers=2, shuffle=False)
    got = [b for b in loader]
    assert [tuple(b.shape) for b in got] == [(3, 8), (5, 8), (7, 8)]
    for b, sid in zip(got, ["s1", "s2", "s4"], strict=True):
        assert isinstance(b, torch.Tensor) and torch.equal(b, torch.from_numpy(rows[sid]))


def test_slices_and_negative_indices(cohort_dir):
    feats, labels, rows = cohort_dir
    with pytest.warns(UserWarning):
        bags = load_cohort(feats, labels, cache=False).bags
    tail = bags[1:]
    assert isinstance(tail, BagSequence) and len(tail) == 2 and tail.n_tiles.tolist() == [5, 7]
    assert np.array_equal(bags[-1], rows["s4"]) and np.array_equal(tail[0], rows["s2"])
    assert [p.name for p in bags.paths] == ["s1.h5", "s2.h5", "s4.h5"]


def test_streamed_cohort_trains_a_mil_head(cohort_dir):
    from models.training import TrainConfig, train

    feats, labels, _ = cohort_dir
    with pytest.warns(UserWarning):
        cohort = load_cohort(feats, labels, targets=["subtype"], cache=False)
    config = TrainConfig(epochs=2, val_fraction=0, hidden=8, device="cpu", num_workers=0)
    model = train(cohort.bags, cohort.labels, classify=["subtype"], config=config, progress=False)
    assert model.feature_dim == 8 and model.tasks[0].classes == ("NORM", "TUM")
    assert len(model.curves) == 2 and np.isfinite(model.curves["train_loss"]).all()
