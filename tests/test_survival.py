"""Survival heads: metrics pinned to lifelines and scikit-survival, losses, risk groups that
are fixed on training data, bad inputs, and cross-validation outputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import models
from models.survival.evaluate import breslow_survival
from models.survival.groups import (
    assign_groups,
    compare_groups,
    logrank_p,
    risk_cutoffs,
    treatment_interaction,
)
from models.survival.losses import cox_efron_nll, discrete_nll, discrete_risk, time_bins
from models.survival.metrics import cumulative_auc, harrell_c, integrated_brier, uno_c
from models.training import TrainConfig
from wsi.synthetic.survival import survival_bags

sksurv_metrics = pytest.importorskip("sksurv.metrics")
Surv = pytest.importorskip("sksurv.util").Surv


def _tied_data(seed: int, n: int = 60):
    """Times rounded to whole months (many ties, events and censorings at one time) and
    risks rounded to one decimal (tied risks)."""
    rng = np.random.default_rng(seed)
    time = np.round(rng.exponential(15, n)) + 1
    event = rng.random(n) < 0.6
    risk = np.round(rng.normal(size=n), 1)
    return time, event, risk


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_lifelines_and_scikit_survival_on_ties(seed):
    from lifelines.utils import concordance_index

    time, event, risk = _tied_data(seed)
    train_time, train_event, _ = _tied_data(seed + 100, 90)
    train_time[np.argmax(train_time)] = time.max() + 1  # G defined over the test follow-up
    assert len(np.unique(time)) < len(time) and len(np.unique(risk)) < len(risk)
    c = harrell_c(time=time, event=event, risk=risk)
    assert c == pytest.approx(concordance_index(time, -risk, event), abs=1e-6)
    assert c == pytest.approx(
        sksurv_metrics.concordance_index_censored(event, time, risk)[0], abs=1e-6
    )
    y_train, y_test = Surv.from_arrays(train_event, train_time), Surv.from_arrays(event, time)
    tau = float(np.quantile(train_time, 0.8))
    ours = uno_c(
        time=time, event=event, risk=risk, train_time=train_time, train_event=train_event, tau=tau
    )
    theirs = sksurv_metrics.concordance_index_ipcw(y_train, y_test, risk, tau=tau)[0]
    assert ours == pytest.approx(theirs, abs=1e-6)
    times = np.array([5.0, 10.0, 20.0])
    auc = cumulative_auc(
        time=time, event=event, risk=risk, train_time=train_time, train_event=train_event,
        times=times,
    )  # fmt: skip
    expected = sksurv_metrics.cumulative_dynamic_auc(y_train, y_test, risk, times)[0]
    np.testing.assert_allclose(auc, expected, atol=1e-6)
    grid = np.linspace(3, 25, 12)
    surv = np.exp(-np.outer(np.exp(risk), grid) / 20)
    ibs = integrated_brier(
        time=time, event=event, survival=surv, times=grid, train_time=train_time,
        train_event=train_event,
    )  # fmt: skip
    expected = sksurv_metrics.integrated_brier_score(y_train, y_test, surv, grid)
    assert ibs == pytest.approx(expected, abs=1e-6)


def test_single_event_agrees_and_all_censored_is_nan_not_a_crash():
    time = np.array([2.0, 3.0, 3.0, 5.0, 8.0, 9.0])
    risk = np.array([0.9, 0.1, 0.5, 0.3, 0.3, 0.0])
    single = np.array([False, True, False, False, False, False])
    c = harrell_c(time=time, event=single, risk=risk)
    assert c == pytest.approx(
        sksurv_metrics.concordance_index_censored(single, time, risk)[0], abs=1e-6
    )
    assert c == pytest.approx(1 / 4)  # event at 3 vs the censored at 3, 5, 8, 9: one concordant
    y = Surv.from_arrays(single, time)
    train_time = np.r_[time, 10.0]
    y_train = Surv.from_arrays(np.r_[single, False], train_time)
    ours = uno_c(time=time, event=single, risk=risk, train_time=train_time,
                 train_event=np.r_[single, False])  # fmt: skip
    assert ours == pytest.approx(sksurv_metrics.concordance_index_ipcw(y_train, y, risk)[0])
    none = np.zeros(6, dtype=bool)
    with pytest.raises(ValueError, match="censored"):
        sksurv_metrics.concordance_index_censored(none, time, risk)
    assert np.isnan(harrell_c(time=time, event=none, risk=risk))
    assert np.isnan(uno_c(time=time, event=none, risk=risk, train_time=time, train_event=single))
    auc = cumulative_auc(time=time, event=none, risk=risk, train_time=time, train_event=single,
                         times=[4.0])  # fmt: skip
    assert np.isnan(auc).all()


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        harrell_c([1.0, 2.0], [1, 1], [0.5, 0.2])  # type: ignore[misc]
    with pytest.raises(TypeError):
        cox_efron_nll(torch.ones(2), torch.ones(2), torch.ones(2))  # type: ignore[misc]


def test_higher_risk_is_worse_everywhere():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4)
    risk = np.array([4.0, 3.0, 2.0, 1.0])  # the first to die has the highest risk
    assert harrell_c(time=time, event=event, risk=risk) == 1.0
    assert uno_c(time=time, event=event, risk=risk, train_time=time, train_event=event) == 1.0
    loss_right = cox_efron_nll(time=torch.tensor(time), event=torch.tensor(event),
                               risk=torch.tensor(risk))  # fmt: skip
    loss_wrong = cox_efron_nll(time=torch.tensor(time), event=torch.tensor(event),
                               risk=torch.tensor(-risk))  # fmt: skip
    assert loss_right < loss_wrong


@pytest.mark.parametrize("seed", [0, 1])
def test_cox_loss_equals_lifelines_partial_log_likelihood_at_fixed_coefficients(seed):
    from lifelines.fitters.coxph_fitter import SemiParametricPHFitter

    rng = np.random.default_rng(seed)
    n = 50
    x = rng.normal(size=(n, 3))
    time = np.round(rng.exponential(5, n)) + 1  # ties: Efron matters
    event = rng.random(n) < 0.7
    beta = np.array([0.7, -0.3, 0.2])
    order = np.argsort(time, kind="stable")
    _, _, loglik = SemiParametricPHFitter()._get_efron_values_single(
        pd.DataFrame(x[order]), pd.Series(time[order]), pd.Series(event[order]),
        pd.Series(np.ones(n)), None, beta,
    )  # fmt: skip
    ours = cox_efron_nll(time=torch.tensor(time), event=torch.tensor(event.astype(float)),
                         risk=torch.tensor(x @ beta))  # fmt: skip
    assert -float(ours) == pytest.approx(loglik, abs=1e-6)
    assert float(cox_efron_nll(time=torch.tensor(time), event=torch.zeros(n),
                               risk=torch.tensor(x @ beta))) == 0.0  # fmt: skip


def test_discrete_time_nll_is_the_likelihood_of_the_paper():
    logits = torch.tensor([[0.2, -0.5, 1.0], [0.0, 0.3, -1.0]])
    h = torch.sigmoid(logits).numpy()
    nll = discrete_nll(logits=logits, time_bin=torch.tensor([1, 2]), event=torch.tensor([1, 0]))
    died_in_bin_1 = (1 - h[0, 0]) * h[0, 1]  # survived bin 0, event in bin 1
    censored_in_bin_2 = (1 - h[1, 0]) * (1 - h[1, 1]) * (1 - h[1, 2])  # survived 0..2
    np.testing.assert_allclose(nll.numpy(), -np.log([died_in_bin_1, censored_in_bin_2]), rtol=1e-6)
    high_hazard = discrete_risk(torch.full((1, 3), 2.0))
    assert float(high_hazard) > float(discrete_risk(torch.full((1, 3), -2.0)))
    edges = time_bins(time=np.arange(1.0, 13.0), event=np.ones(12), n_bins=4)
    assert edges == pytest.approx([3.75, 6.5, 9.25])


def test_breslow_survival_matches_lifelines_baseline():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    frame = pd.DataFrame({"x": x, "t": np.round(rng.exponential(5, 40)) + 1,
                          "e": (rng.random(40) < 0.7).astype(int)})  # fmt: skip
    cox = CoxPHFitter().fit(frame, "t", "e")
    at = np.array([2.0, 4.0, 7.0])
    risk = cox.params_["x"] * (x - x.mean())  # lifelines centres covariates
    ours = breslow_survival(time=frame["t"].to_numpy(), event=frame["e"].to_numpy(), risk=risk,
                            new_risk=risk[:3], at=at)  # fmt: skip
    theirs = cox.predict_survival_function(frame.iloc[:3], times=at).to_numpy().T
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_cut_offs_come_from_training_risks_and_an_empty_group_is_reported():
    train_risk = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    cutoffs = risk_cutoffs(risk=train_risk, scheme="median")
    assert cutoffs == [2.0]
    held_out = np.array([-5.0, 2.0, 2.5, 100.0])
    np.testing.assert_array_equal(assign_groups(risk=held_out, cutoffs=cutoffs), [0, 0, 1, 1])
    assert risk_cutoffs(risk=train_risk, scheme="tertiles") == pytest.approx([4 / 3, 8 / 3])
    result = compare_groups(time=[1.0, 2.0, 3.0], event=[1, 0, 1], group=[0, 0, 0])
    assert result["logrank_p"] is None and "empty" in result["note"]
    assert result["n_per_group"] == {"low": 3, "high": 0}


@pytest.mark.slow
def test_log_rank_on_a_null_outcome_is_significant_in_about_5_percent_of_runs():
    rng = np.random.default_rng(0)
    hits, runs = 0, 400
    for _ in range(runs):
        train_risk, risk = rng.normal(size=40), rng.normal(size=60)
        group = assign_groups(risk=risk, cutoffs=risk_cutoffs(risk=train_risk))
        time = rng.exponential(10, 60)  # the outcome knows nothing of the risk
        event = rng.random(60) < 0.7
        hits += logrank_p(time=time, event=event, group=group) < 0.05
    assert 0.03 <= hits / runs <= 0.075


@pytest.mark.slow
def test_treatment_interaction_finds_a_predictive_group_and_not_a_prognostic_one():
    rng = np.random.default_rng(1)
    n = 400
    group = rng.integers(0, 2, n)
    arm = np.where(rng.random(n) < 0.5, "drug", "control")
    treated = arm == "drug"
    predictive = np.exp(1.2 * group * treated)  # only treated high-group patients fare worse
    prognostic = np.exp(1.2 * group)  # high group worse in both arms
    for hazard, small in ((predictive, True), (prognostic, False)):
        time = rng.exponential(1 / hazard)
        result = treatment_interaction(time=time, event=np.ones(n), group=group, treatment=arm)
        assert (result["p_interaction"] < 0.01) is small, result
    assert result["treated_arm"] == "drug"
    three = treatment_interaction(time=time, event=np.ones(n), group=group,
                                  treatment=np.arange(n) % 3)  # fmt: skip
    assert three["p_interaction"] is None and "2 values" in three["note"]


@pytest.fixture(scope="module")
def cohort():
    bags, labels = survival_bags(36, seed=0, dim=8, tiles=12)
    labels.loc[0, "os_months"] = -3.0  # negative time
    labels["os_event"] = labels["os_event"].astype(object)
    labels.loc[1, "os_event"] = "maybe"  # not an event
    labels.loc[2, "os_months"] = np.nan  # missing
    labels.loc[3, "os_event"] = "yes"
    labels["patient_id"] = labels["patient_id"].where(labels.index != 5, "p004")  # two slides
    return bags, labels


FAST = {"epochs": 3, "hidden": 16, "val_fraction": 0.0, "dropout": 0.0}


def test_cross_validation_writes_survival_outputs_and_drops_bad_rows(cohort, tmp_path):
    bags, labels = cohort
    with pytest.warns(UserWarning, match="3 slide"):
        cv = models.cross_validate(
            bags, labels, survival=["os_months:os_event"], classify=["arm"], folds=3,
            arch="meanpool", config=TrainConfig(**FAST), progress=False, out_dir=tmp_path,
            treatment="arm", refit=True,
        )  # fmt: skip
    entry = json.loads((tmp_path / "metrics.json").read_text())["tasks"]["os_months"]
    assert entry["kind"] == "survival"
    for key in ("c_index", "c_index_uno", "logrank_p", "hazard_ratio", "ibs", "auc_12"):
        assert key in entry
    assert len(entry["c_index_ci"]) == 2 and len(entry["per_fold"]) == 3
    assert "negative time" in entry["notes"][0] and "event not 0/1" in entry["notes"][0]
    assert entry["n_patients"] == 36 - 3 - 1  # 3 bad rows; slides 4 and 5 are one patient
    assert sum(f["n"] for f in entry["per_fold"]) == entry["n_patients"]
    assert entry["treatment"]["column"] == "arm"
    table = pd.read_csv(tmp_path / "predictions.csv")
    for column in ("os_months_time", "os_months_event", "os_months_risk", "os_months_group"):
        assert column in table.columns
    assert table.loc[0:2, "os_months_time"].isna().all()
    assert table.loc[3, "os_months_event"] == 1
    assert set(table["os_months_group"]) <= {"low", "high"}
    # groups use each fold model's training cut-offs, unchanged
    for k, model in enumerate(cv.models):
        cut = model.survival["os_months"]["cutoffs"][0]
        rows = table[table["fold"] == k]
        np.testing.assert_array_equal(
            rows["os_months_group"] == "high", rows["os_months_risk"] > cut
        )
    again = models.load_checkpoint(tmp_path / "model.pt")
    assert again.survival == cv.final.survival
    predicted = models.predict(again, bags[:6], labels["slide_id"][:6].tolist())
    cut = again.survival["os_months"]["cutoffs"][0]
    np.testing.assert_array_equal(
        predicted["os_months_group"] == "high", predicted["os_months_risk"] > cut
    )
    assert "os_months_pred" not in predicted.columns
    assert "c_index" in repr(cv)
    summary = cv.summary()
    assert "c_index" in set(summary["metric"])


@pytest.mark.slow
def test_a_fold_without_events_gives_nan_metrics_with_the_reason(cohort):
    bags, labels = cohort
    labels = labels.copy()
    labels["os_event"] = 0
    labels.loc[[10, 11], "os_event"] = 1  # two events: some fold of three has none
    labels["patient_id"] = [f"q{i}" for i in range(36)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv = models.cross_validate(
            bags, labels, survival=["os_months:os_event"], folds=3,
            arch="meanpool", config=TrainConfig(**FAST), progress=False,
        )  # fmt: skip
    per_fold = cv.metrics["tasks"]["os_months"]["per_fold"]
    empty = [f for f in per_fold if f["n_events"] == 0]
    assert empty, "expected a fold without events"
    for f in empty:
        assert f["c_index"] is None and "no event" in f["note"]


@pytest.mark.slow
def test_every_head_trains_a_survival_task_with_either_loss(cohort):
    bags, labels = cohort
    labels = labels.iloc[6:].reset_index(drop=True)
    bags = bags[6:]
    for arch in ("abmil", "clam_sb", "transmil", "meanpool"):
        for loss in ("cox", "nll"):
            config = TrainConfig(**{**FAST, "epochs": 1}, survival_loss=loss, survival_bins=3)
            model = models.train(bags, labels, survival=["os_months:os_event"], arch=arch,
                                 config=config, progress=False)  # fmt: skip
            table = model.predict(bags[:4], labels["slide_id"][:4].tolist())
            assert np.isfinite(table["os_months_risk"]).all()
            assert len(model.survival["os_months"]["bins"]) == (2 if loss == "nll" else 0)
            assert "survival" in repr(model)


@pytest.mark.slow
def test_head_c_index_is_within_005_of_a_cox_model_on_mean_pooled_features():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "survival.py"
    spec = importlib.util.spec_from_file_location("bench_survival", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bags, labels = survival_bags(100, seed=0)
    cv = models.cross_validate(
        bags, labels, survival=["os_months:os_event"], folds=4, arch="abmil",
        config=TrainConfig(epochs=15, hidden=64), progress=False,
    )  # fmt: skip
    ours = cv.metrics["tasks"]["os_months"]["c_index"]
    baseline = bench.mean_pooled_cox(bags, labels, cv.folds)
    assert ours >= baseline - 0.05, (ours, baseline)
    assert ours > 0.6
