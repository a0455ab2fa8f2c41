"""Training, cross-validation, prediction and checkpoints, on synthetic bags with known answers.

The cohort: tiles are 32-d Gaussian noise. Tumour slides ("yes") hold 3-7 "key" tiles
shifted along one direction; every slide has a fraction (0-0.6) of "lymphocyte" tiles
shifted along an orthogonal direction, and that fraction is the regression target.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import torch

import models
from models import mil
from models.atomic import HOST
from models.errors import CheckpointError, TrainingDataError
from models.metrics import auc_macro, balanced_accuracy, regression_metrics, spearman
from models.mil import ARCHITECTURES, TaskSpec, build_model
from models.training import (
    CHECKPOINT_VERSION,
    TrainConfig,
    assign_folds,
    cross_validate,
    load_checkpoint,
    predict,
    train,
)
from models.training.bags import _batch
from models.training.losses import _batch_loss, _class_weights
from tests.tiny_heads import ScoredPool

DIM = 32
FAST = {"hidden": 64, "lr": 1e-3, "batch_size": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_cohort(n_bags: int, seed: int = 0, dim: int = DIM):
    """Bags, labels (slide_id, patient_id, tumour, lymph_frac) and each bag's key-tile mask."""
    rng = np.random.default_rng(seed)
    key, lymph = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
    bags, rows, keys = [], [], []
    for i in range(n_bags):
        n = int(rng.integers(24, 64))
        bag = rng.normal(size=(n, dim))
        order = rng.permutation(n)
        n_key = int(rng.integers(3, 8)) if i % 2 else 0
        bag[order[:n_key]] += 4.0 * key
        n_lymph = int(round(rng.uniform(0.0, 0.6) * (n - n_key)))
        bag[order[n_key : n_key + n_lymph]] += 4.0 * lymph
        is_key = np.zeros(n, dtype=bool)
        is_key[order[:n_key]] = True
        bags.append(bag.astype(np.float32))
        keys.append(is_key)
        rows.append(
            {
                "slide_id": f"s{i:03d}",
                "patient_id": f"p{i // 2:03d}",
                "tumour": "yes" if i % 2 else "no",
                "lymph_frac": n_lymph / n,
            }
        )
    return bags, pd.DataFrame(rows), keys


# --------------------------------------------------------------------------- known answers


@pytest.fixture(scope="module")
def cohort():
    bags, labels, keys = make_cohort(180)
    return {
        "train": (bags[:120], labels.iloc[:120]),
        "test": (bags[120:], labels.iloc[120:].reset_index(drop=True), keys[120:]),
    }


def _scores(model, cohort) -> dict[str, float]:
    bags, labels, keys = cohort["test"]
    maps: dict[str, dict[str, np.ndarray]] = {}
    pred = predict(model, bags, labels.slide_id, on_attention=maps.__setitem__)
    scores = {}
    if "tumour_pred" in pred:
        y = (labels.tumour == "yes").to_numpy().astype(int)
        scores["auc"] = auc_macro(y, pred[["tumour_prob_no", "tumour_prob_yes"]].to_numpy())
        masses = [
            maps[s]["tumour"][k].sum()
            for s, k in zip(labels.slide_id, keys, strict=True)
            if k.any()
        ]
        scores["key_attention"] = float(np.mean(masses))
    if "lymph_frac_pred" in pred:
        scores["spearman"] = spearman(labels.lymph_frac, pred.lymph_frac_pred)
    return scores


@pytest.fixture(scope="module")
def single_and_joint(cohort):
    bags, labels = cohort["train"]
    config = TrainConfig(epochs=25, **FAST)
    runs = {
        "classify": {"classify": ["tumour"]},
        "regress": {"regress": ["lymph_frac"]},
        "joint": {"classify": ["tumour"], "regress": ["lymph_frac"]},
    }
    return {
        name: _scores(train(bags, labels, config=config, progress=False, **targets), cohort)
        for name, targets in runs.items()
    }


@pytest.mark.slow
def test_abmil_finds_the_key_tiles(single_and_joint):
    scores = single_and_joint["classify"]
    assert scores["auc"] >= 0.95
    assert scores["key_attention"] >= 0.80  # mean attention mass on 3-7 of 24-63 tiles


@pytest.mark.slow
def test_abmil_regresses_a_tile_fraction(single_and_joint):
    assert single_and_joint["regress"]["spearman"] >= 0.90


@pytest.mark.slow
def test_joint_training_keeps_each_task_within_005(single_and_joint):
    joint = single_and_joint["joint"]
    assert joint["auc"] >= single_and_joint["classify"]["auc"] - 0.05
    assert joint["spearman"] >= single_and_joint["regress"]["spearman"] - 0.05
    assert joint["key_attention"] >= 0.80


# --------------------------------------------------------------------------- heads, checkpoints


@pytest.fixture(scope="module")
def small():
    return make_cohort(40, seed=1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_head_trains_saves_loads_and_predicts_identically(arch, small, tmp_path):
    bags, labels, _ = small
    config = TrainConfig(epochs=4, val_fraction=0, **FAST)
    model = train(
        bags,
        labels,
        classify=["tumour"],
        regress=["lymph_frac"],
        arch=arch,
        config=config,
        encoder="toy",
        progress=False,
    )
    curves = model.curves
    assert len(curves) == 4
    assert curves.train_loss.iloc[-1] < curves.train_loss.iloc[0]
    path = model.save(tmp_path / "model.pt")
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.encoder, loaded.feature_dim) == (arch, "toy", DIM)
    assert loaded.tasks == (
        TaskSpec("tumour", "classification", ["no", "yes"]),
        TaskSpec("lymph_frac", "regression"),
    )
    assert loaded.regression_stats == model.regression_stats
    before = predict(model, bags, labels.slide_id)
    after = predict(path, bags, labels.slide_id)
    pd.testing.assert_frame_equal(before, after)
    assert list(after.columns) == [
        "slide_id",
        "tumour_pred",
        "tumour_prob_no",
        "tumour_prob_yes",
        "lymph_frac_pred",
    ]
    np.testing.assert_allclose(after.tumour_prob_no + after.tumour_prob_yes, 1.0, rtol=1e-6)
    # regression predictions come back in the target's units (fractions 0-0.6 here)
    assert 0.0 < after.lymph_frac_pred.mean() < 0.6
    maps = loaded.attention(bags[0])
    assert set(maps) == {"tumour", "lymph_frac"}
    assert maps["tumour"].shape == (len(bags[0]),)
    assert maps["tumour"].sum() == pytest.approx(1.0, abs=1e-5)


def test_a_registered_head_trains_cross_validates_and_reloads(small, tmp_path, monkeypatch):
    monkeypatch.setattr(mil, "_HEADS", dict(mil._HEADS))  # the registration ends with the test
    models.register_head("scored", ScoredPool, description="one score per tile")
    bags, labels, keys = small
    config = TrainConfig(epochs=12, val_fraction=0, arch_kwargs={"scale": 2.0}, **FAST)
    cv = cross_validate(
        bags,
        labels,
        classify=["tumour"],
        folds=3,
        arch="scored",
        config=config,
        out_dir=tmp_path / "run",
        refit=True,
        progress=False,
    )
    assert cv.metrics["model"] == "scored"
    assert cv.metrics["tasks"]["tumour"]["auc_macro"] > 0.8  # measured 0.87; chance 0.5
    assert all(isinstance(m.model, ScoredPool) and m.model.scale == 2.0 for m in cv.models)
    loaded = load_checkpoint(tmp_path / "run" / "model.pt")
    assert loaded.arch == "scored" and loaded.model.scale == 2.0
    pd.testing.assert_frame_equal(
        predict(loaded, bags, labels.slide_id), predict(cv.final, bags, labels.slide_id)
    )
    # the head learnt to look at the key tiles of a tumour slide
    maps = loaded.attention(bags[1])
    assert maps["tumour"].sum() == pytest.approx(1.0, abs=1e-5)
    assert maps["tumour"][keys[1]].sum() > 0.5

    model = models.train(
        bags, labels, classify=["tumour"], arch="scored", config=config, progress=False
    )
    assert isinstance(model.model, ScoredPool) and len(model.curves) == 12

    monkeypatch.delitem(mil._HEADS, "scored")  # a process that did not register it
    with pytest.raises(CheckpointError, match=r"models\.register_head\('scored', builder\)"):
        load_checkpoint(tmp_path / "run" / "model.pt")


def test_reprs_are_one_line_and_say_what_they_hold(small):
    bags, labels, _ = small
    config = TrainConfig(epochs=2, val_fraction=0, **FAST)
    cv = cross_validate(
        bags[:12],
        labels.iloc[:12],
        classify=["tumour"],
        regress=["lymph_frac"],
        folds=2,
        config=config,
        refit=True,
        progress=False,
    )
    for x in (cv, cv.final, config):
        assert "\n" not in repr(x)
    assert repr(cv).startswith("CVResult(2 folds of 12 slides, abmil; tumour: auc_macro ")
    assert "lymph_frac: spearman " in repr(cv) and repr(cv).endswith("final model: yes)")
    n_params = sum(p.numel() for p in cv.final.model.parameters())
    assert repr(cv.final).startswith(
        f"TrainedModel(abmil on {DIM}-d features of encoder None, {n_params:,} parameters; "
    )
    assert "tasks: tumour (2 classes), lymph_frac (regression); best epoch 2)" in repr(cv.final)


def test_training_is_bit_deterministic_on_cpu(small):
    bags, labels, _ = small
    config = TrainConfig(epochs=3, dropout=0.25, max_tiles=16, **FAST)
    runs = [
        predict(
            train(bags, labels, classify=["tumour"], config=config, progress=False),
            bags,
            labels.slide_id,
        )
        for _ in range(2)
    ]
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)
    other = TrainConfig(epochs=3, dropout=0.25, max_tiles=16, seed=1, **FAST)
    changed = predict(
        train(bags, labels, classify=["tumour"], config=other, progress=False),
        bags,
        labels.slide_id,
    )
    assert not np.array_equal(changed.tumour_prob_yes, runs[0].tumour_prob_yes)


def test_prefetching_workers_do_not_change_the_result(small):
    bags, labels, _ = small
    runs = []
    for workers in (0, 2):
        config = TrainConfig(epochs=3, max_tiles=16, num_workers=workers, **FAST)
        model = train(bags, labels, classify=["tumour"], config=config, progress=False)
        runs.append(predict(model, bags, labels.slide_id, num_workers=workers))
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)


def test_early_stopping_restores_the_best_epoch(small):
    bags, labels, _ = small
    config = TrainConfig(epochs=30, patience=2, val_fraction=0.25, **FAST)
    model = train(bags, labels, regress=["lymph_frac"], config=config, progress=False)
    curves = model.curves
    best = int(curves.val_loss.idxmin())
    assert model.best_epoch == curves.epoch[best]
    assert len(curves) <= model.best_epoch + 2  # stopped after `patience` worse epochs
    assert list(curves.columns) == ["epoch", "train_loss", "val_loss", "val_loss_lymph_frac"]


class CountingBags(Sequence):
    """A streamed bag source: counts reads per slide, holds nothing between reads."""

    feature_dim = DIM

    def __init__(self, bags):
        self._bags, self.reads = bags, [0] * len(bags)

    def __len__(self):
        return len(self._bags)

    def __getitem__(self, i):
        self.reads[i] += 1
        return self._bags[i]


def test_streamed_bags_are_read_once_per_epoch(small):
    bags, labels, _ = small
    labels = labels.assign(tumour=labels.tumour.where(labels.index != 5))  # slide 5 unlabelled
    source = CountingBags(bags)
    config = TrainConfig(epochs=3, patience=10, val_fraction=0.25, **FAST)
    train(source, labels, classify=["tumour"], config=config, progress=False)
    expected = [3] * len(bags)
    expected[5] = 0  # a slide without any known target is never read
    assert source.reads == expected


def test_bag_subsampling_keeps_tile_order_and_changes_each_draw():
    bag = torch.arange(50, dtype=torch.float32).repeat(3, 1).T  # row i = [i, i, i]
    generator = torch.Generator().manual_seed(0)
    x1, mask, _ = _batch([(bag, 0)], 10, generator, torch.device("cpu"))
    x2, _, _ = _batch([(bag, 0)], 10, generator, torch.device("cpu"))
    assert mask is None and x1.shape == (1, 10, 3)
    rows = x1[0, :, 0]
    assert torch.all(rows[1:] > rows[:-1])  # a subset, in the original tile order
    assert not torch.equal(x1, x2)  # a fresh subset each draw
    short, _, _ = _batch([(bag[:4], 0)], 10, generator, torch.device("cpu"))
    assert torch.equal(short[0], bag[:4])


def test_padded_batches_carry_masks():
    items = [(torch.ones(3, 2), 4), (torch.ones(5, 2), 7)]
    x, mask, index = _batch(items, None, None, torch.device("cpu"))
    assert x.shape == (2, 5, 2)
    assert mask.sum(dim=1).tolist() == [3, 5]
    assert index.tolist() == [4, 7]
    assert x[0, 3:].abs().sum() == 0


# --------------------------------------------------------------------------- losses


def test_unknown_labels_add_no_loss_but_the_other_task_still_trains():
    tasks = (TaskSpec("tumour", "classification", ["no", "yes"]), TaskSpec("frac", "regression"))
    torch.manual_seed(0)
    model = build_model("abmil", DIM, tasks, hidden=16, dropout=0.0)
    out = model(torch.randn(2, 10, DIM))
    targets = {"tumour": torch.tensor([1, -1]), "frac": torch.tensor([float("nan"), 0.5])}
    weights = {"tumour": torch.ones(2)}
    loss = _batch_loss(out, targets, tasks, weights, "mse")
    loss.backward()
    reg_head, cls_head = model.heads[1], model.heads[0]
    # bag 0 has no 'frac': only bag 1's residual reaches the regression head
    residual = out.outputs["frac"][1].detach() - 0.5
    assert float(reg_head.bias.grad) == pytest.approx(2 * float(residual), rel=1e-5)
    assert cls_head.weight.grad.abs().sum() > 0
    assert torch.isfinite(loss)
    ce = torch.nn.functional.cross_entropy(
        out.outputs["tumour"][:1].detach(), targets["tumour"][:1]
    )
    assert float(loss.detach()) == pytest.approx(float(ce) + float(residual) ** 2, rel=1e-5)


def test_class_weights_balance_the_classes():
    weights = _class_weights(np.array([0, 0, 0, 1, -1]), 3, weighted=True)
    # 4 known slides, 2 present classes: 4 / (2 * 3) and 4 / (2 * 1); absent class 0
    np.testing.assert_allclose(weights.numpy(), [2 / 3, 2.0, 0.0], rtol=1e-6)
    assert _class_weights(np.array([0, 1, 1]), 2, weighted=False).tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- cross-validation


def _patient_cohort():
    """45 slides of 20 patients (1-4 slides each), three imbalanced classes per patient."""
    rng = np.random.default_rng(3)
    rows = []
    for p in range(20):
        subtype = ["luad", "lusc", "meso"][0 if p < 10 else 1 if p < 16 else 2]
        for _ in range(int(rng.integers(1, 5))):
            rows.append({"slide_id": f"s{len(rows)}", "patient_id": f"p{p}", "subtype": subtype})
    return pd.DataFrame(rows)


def test_folds_never_split_a_patient_and_keep_every_class_in_every_fold():
    labels = _patient_cohort()
    for seed in range(10):
        folds = assign_folds(labels, classify=["subtype"], folds=4, seed=seed)
        frame = labels.assign(fold=folds)
        assert frame.groupby("patient_id").fold.nunique().max() == 1
        assert frame.groupby("fold").subtype.nunique().tolist() == [3, 3, 3, 3]
    first = assign_folds(labels, classify=["subtype"], folds=4, seed=0)
    np.testing.assert_array_equal(first, assign_folds(labels, classify=["subtype"], folds=4))


def test_folds_without_a_class_target_are_grouped_or_plain():
    labels = _patient_cohort()
    grouped = labels.assign(fold=assign_folds(labels, folds=5))
    assert grouped.groupby("patient_id").fold.nunique().max() == 1
    plain = np.bincount(assign_folds(labels.drop(columns="patient_id"), folds=5))
    assert plain.sum() == len(labels) and plain.max() - plain.min() <= 1


def test_cross_validate_writes_the_documented_outputs(small, tmp_path):
    bags, labels, _ = small
    labels = labels.assign(lymph_frac=labels.lymph_frac.where(labels.index % 10 != 0))
    config = TrainConfig(epochs=3, **FAST)
    result = cross_validate(
        bags,
        labels,
        classify=["tumour"],
        regress=["lymph_frac"],
        folds=3,
        config=config,
        out_dir=tmp_path,
        progress=False,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert (metrics["model"], metrics["folds"]) == ("abmil", 3)
    tumour, frac = metrics["tasks"]["tumour"], metrics["tasks"]["lymph_frac"]
    assert set(tumour) == {"kind", "classes", "auc_macro", "balanced_accuracy", "per_fold"}
    assert tumour["classes"] == ["no", "yes"]
    assert set(frac) == {"kind", "spearman", "pearson", "mae", "per_fold"}
    assert [f["fold"] for f in frac["per_fold"]] == [0, 1, 2]
    assert sum(f["n"] for f in frac["per_fold"]) == 36  # the 4 NaN targets are not scored
    assert sum(f["n"] for f in tumour["per_fold"]) == 40
    mean_auc = np.mean([f["auc_macro"] for f in tumour["per_fold"]])
    assert tumour["auc_macro"] == pytest.approx(mean_auc)

    pred = pd.read_csv(tmp_path / "predictions.csv")
    assert list(pred.columns) == [
        "slide_id",
        "fold",
        "tumour_true",
        "tumour_pred",
        "tumour_prob_no",
        "tumour_prob_yes",
        "lymph_frac_true",
        "lymph_frac_pred",
    ]
    assert pred.slide_id.tolist() == labels.slide_id.tolist()
    assert pred.lymph_frac_true.isna().sum() == 4
    folds = pred.set_index("slide_id").fold
    assert labels.assign(fold=folds.values).groupby("patient_id").fold.nunique().max() == 1
    for k in range(3):
        assert (tmp_path / f"fold_{k}" / "model.pt").is_file()
        assert len(pd.read_csv(tmp_path / f"fold_{k}" / "curves.csv")) >= 1
    # out-of-fold metrics recomputed from predictions.csv agree with metrics.json
    fold0 = pred[pred.fold == 0].dropna(subset=["lymph_frac_true"])
    rho = regression_metrics(fold0.lymph_frac_true, fold0.lymph_frac_pred)["spearman"]
    assert rho == pytest.approx(frac["per_fold"][0]["spearman"])

    summary = result.summary()
    assert list(summary.columns) == ["task", "metric", "mean", "sd"]
    assert len(summary) == 5
    row = summary[(summary.task == "tumour") & (summary.metric == "auc_macro")].iloc[0]
    assert row["mean"] == pytest.approx(mean_auc)

    again = cross_validate(
        bags,
        labels,
        classify=["tumour"],
        regress=["lymph_frac"],
        folds=3,
        config=config,
        progress=False,
    )
    pd.testing.assert_frame_equal(again.predictions, result.predictions, check_exact=True)


@pytest.mark.slow
def test_a_rerun_reuses_the_finished_folds_of_the_same_run_only(small, tmp_path):
    bags, labels, _ = small
    config = TrainConfig(epochs=2, **FAST)
    common = {"classify": ["tumour"], "regress": ["lymph_frac"], "folds": 3, "progress": False}
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / "metrics.json").write_text('{"model": "abm')  # an older run's leftovers
    (tmp_path / "fold_4").mkdir()
    (tmp_path / "fold_4" / "metrics.json").write_text("{}")
    stale = tmp_path / f".predictions.csv.tmp-{HOST}-{int(dead.stdout)}"
    stale.write_text("slide_id,fo")
    first = cross_validate(
        bags, labels, config=config, out_dir=tmp_path, data_key="v1", refit=True, **common
    )
    assert first.reused_folds == [] and not stale.exists() and not (tmp_path / "fold_4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fold_0",
        "fold_1",
        "fold_2",
        "metrics.json",
        "model.pt",
        "predictions.csv",
    ]
    fold_1 = json.loads((tmp_path / "fold_1" / "metrics.json").read_text())
    assert fold_1["tasks"]["tumour"] == {
        k: v for k, v in first.metrics["tasks"]["tumour"]["per_fold"][1].items() if k != "fold"
    }
    alone = train(
        bags, labels, classify=["tumour"], regress=["lymph_frac"], config=config, progress=False
    )  # refit=True trains what train() trains
    assert torch.equal(first.final.model.projection[0].weight, alone.model.projection[0].weight)

    (tmp_path / "fold_1" / "metrics.json").unlink()  # fold 1 unfinished, as after a crash
    again = cross_validate(
        bags, labels, config=config, out_dir=tmp_path, data_key="v1", refit=True, **common
    )
    assert again.reused_folds == [0, 2]
    assert again.metrics == first.metrics
    pd.testing.assert_frame_equal(again.predictions, first.predictions, check_exact=True)
    for k in range(3):
        a, b = again.models[k].model.state_dict(), first.models[k].model.state_dict()
        assert all(torch.equal(a[name], b[name]) for name in a)

    edited = labels.assign(tumour=labels.tumour.where(labels.index != 3, "no"))
    changes = [
        {"data_key": "v2"},  # other feature files
        {"data_key": None},  # unknown feature files: never reuse
        {"data_key": "v1", "labels": edited},
        {"data_key": "v1", "config": TrainConfig(epochs=2, seed=1, **FAST)},
    ]
    for i, change in enumerate(changes):
        folder = shutil.copytree(tmp_path, tmp_path.parent / f"changed{i}")  # the v1 run
        run = {"labels": labels, "config": config, **change}
        result = cross_validate(bags, run.pop("labels"), out_dir=folder, **run, **common)
        assert result.reused_folds == [], change
    prefetching = TrainConfig(epochs=2, num_workers=1, **FAST)  # changes nothing: reused
    result = cross_validate(
        bags, labels, config=prefetching, out_dir=tmp_path, data_key="v1", **common
    )
    assert result.reused_folds == [0, 1, 2]
    pd.testing.assert_frame_equal(result.predictions, first.predictions, check_exact=True)


def test_progress_bars_can_be_silenced(small, capsys):
    bags, labels, _ = small
    config = TrainConfig(epochs=1, **FAST)
    train(bags, labels, classify=["tumour"], config=config, progress=False)
    assert capsys.readouterr().err == ""
    train(bags, labels, classify=["tumour"], config=config, progress=True)
    assert "epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad inputs


def _tiny():
    bags, labels, _ = make_cohort(12, seed=2)
    return bags, labels


def test_missing_target_column_lists_the_columns():
    bags, labels = _tiny()
    with pytest.raises(TrainingDataError, match=r"\['grade'\] not in labels.*'tumour'"):
        train(bags, labels, classify=["grade"], progress=False)


def test_class_with_fewer_slides_than_folds():
    bags, labels = _tiny()
    labels.loc[labels.index[:9], "tumour"] = "no"  # 'yes' keeps slides 9 and 11
    with pytest.raises(
        TrainingDataError, match="'yes'.*2 slides.*folds=5.*use fewer folds or merge"
    ):
        cross_validate(bags, labels, classify=["tumour"], folds=5, progress=False)


def test_all_empty_regression_column():
    bags, labels = _tiny()
    labels["score"] = [None] * len(labels)
    with pytest.raises(TrainingDataError, match="'score' is empty for every slide"):
        train(bags, labels, regress=["score"], progress=False)


def test_non_numeric_regression_value_is_named():
    bags, labels = _tiny()
    labels["score"] = ["0.1"] * 5 + ["high"] + [""] * 6
    with pytest.raises(TrainingDataError, match=r"'score'.*'high' \(slide 's005'"):
        train(bags, labels, regress=["score"], progress=False)


def test_bags_of_different_feature_dims():
    bags, labels = _tiny()
    bags[7] = np.zeros((10, DIM + 1), dtype=np.float32)
    config = TrainConfig(epochs=1, val_fraction=0, **FAST)
    with pytest.raises(TrainingDataError, match=r"'s007'.*\(10, 33\).*\(N, 32\)"):
        train(bags, labels, classify=["tumour"], config=config, progress=False)


def test_labels_must_match_the_bags():
    bags, labels = _tiny()
    with pytest.raises(TrainingDataError, match="11 rows but there are 12 bags"):
        train(bags, labels.iloc[:11], classify=["tumour"], progress=False)
    with pytest.raises(TrainingDataError, match="name at least one target"):
        train(bags, labels, progress=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    bags, labels = _tiny()
    config = TrainConfig(epochs=1, val_fraction=0, **FAST)
    model = train(bags, labels, classify=["tumour"], config=config, encoder="uni", progress=False)
    return model.save(tmp_path_factory.mktemp("ckpt") / "model.pt")


def test_unknown_checkpoint_version_names_both_versions(tiny_checkpoint, tmp_path):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["format_version"] = 99
    torch.save(checkpoint, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=f"version 99.*reads version {CHECKPOINT_VERSION}"):
        load_checkpoint(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read MIL checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_predict_refuses_other_dims_and_other_encoders(tiny_checkpoint):
    bags, labels = _tiny()
    with pytest.raises(CheckpointError, match=r"'s000'.*\(N, 32\).*encoder 'uni'"):
        predict(tiny_checkpoint, [b[:, :16] for b in bags], labels.slide_id)
    with pytest.raises(CheckpointError, match="expects features from encoder 'uni'.*'resnet50'"):
        predict(tiny_checkpoint, bags, labels.slide_id, encoder="resnet50")
    assert len(predict(tiny_checkpoint, bags, labels.slide_id, encoder="uni")) == 12


# --------------------------------------------------------------------------- metrics


def test_metrics_known_values():
    y = np.array([0, 0, 1, 1])
    assert auc_macro(y, np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])) == 0.75
    probs = np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.1
    assert auc_macro(np.array([0, 1, 2, 2]), probs) == 1.0
    assert np.isnan(auc_macro(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]])))
    assert balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(
        (2 / 3 + 1) / 2
    )
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 5.0]))
    assert m["spearman"] == pytest.approx(0.8)
    assert m["mae"] == pytest.approx(0.75)
    assert m["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 3, 2, 5])[0, 1])


def test_small_cohorts_still_get_a_validation_split():
    """Every class smaller than the 5 validation splits: a plain patient split is used."""
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(10, 8)).astype(np.float32) for _ in range(9)]
    labels = pd.DataFrame({"slide_id": [f"s{i}" for i in range(9)], "kind": ["a", "b", "c"] * 3})
    model = train(bags, labels, classify=["kind"], config=TrainConfig(epochs=2), progress=False)
    assert model.feature_dim == 8


@pytest.mark.slow
def test_attention_gradients_do_not_depend_on_the_thread_count():
    """torch's CPU softmax backward differs with 1 vs 2 threads (~1e-8); masked_softmax must
    not, so that training gives the same weights on any machine."""
    import subprocess
    import sys

    script = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1]));"
        "from models.mil import masked_softmax;"
        "g = torch.Generator().manual_seed(0);"
        "x = torch.randn(20, 2, 55, generator=g, requires_grad=True);"
        "mask = torch.rand(20, 55, generator=g) > 0.2;"
        "masked_softmax(x, mask).backward(torch.randn(20, 2, 55, generator=g));"
        "print(x.grad.numpy().tobytes().hex())"
    )
    grads = {
        threads: subprocess.run(
            [sys.executable, "-c", script, str(threads)], check=True, capture_output=True, text=True
        ).stdout.strip()
        for threads in (1, 2)
    }
    assert grads[1] == grads[2]
