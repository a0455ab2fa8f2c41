"""Which survival loss: cross-validated C-index of Cox vs discrete-time NLL heads, and of a
Cox model on mean-pooled features (lifelines), on a synthetic cohort, same folds.

    python3 benchmarks/survival.py [--bags 120] [--folds 4] [--seeds 0,1,2] [--arch abmil]

The cohort (:func:`wsi.synthetic.survival.survival_bags`): each bag holds a fraction of
"lymphocyte" tiles and its hazard falls with that fraction. Prints per seed and the mean
over seeds of Harrell's C (fold means), Uno's C and the integrated Brier score. Not a
test: the slow test ``tests/test_survival.py`` asserts the head is within 0.05 of the
mean-pooled Cox model.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd

import models
from models.survival.metrics import harrell_c
from models.training import TrainConfig
from wsi.synthetic.survival import survival_bags


def mean_pooled_cox(bags, labels: pd.DataFrame, folds: np.ndarray) -> float:
    """Fold mean of Harrell's C of lifelines' CoxPHFitter (penalizer 0.1) on mean features."""
    from lifelines import CoxPHFitter

    x = pd.DataFrame(np.stack([b.mean(axis=0) for b in bags])).add_prefix("f")
    x["t"], x["e"] = labels["os_months"].to_numpy(), labels["os_event"].to_numpy()
    scores = []
    for k in np.unique(folds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cox = CoxPHFitter(penalizer=0.1).fit(x[folds != k], "t", "e")
        test = x[folds == k]
        risk = cox.predict_log_partial_hazard(test).to_numpy()
        scores.append(harrell_c(time=test["t"], event=test["e"], risk=risk))
    return float(np.nanmean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=120)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arch", default="abmil")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        bags, labels = survival_bags(args.bags, seed=seed)
        row = {"seed": seed}
        for loss in ("cox", "nll"):
            config = TrainConfig(epochs=args.epochs, hidden=64, survival_loss=loss, seed=seed)
            cv = models.cross_validate(
                bags, labels, survival=["os_months:os_event"], folds=args.folds,
                arch=args.arch, config=config, progress=False,
            )  # fmt: skip
            entry = cv.metrics["tasks"]["os_months"]
            row[f"{loss}_c"], row[f"{loss}_uno"] = entry["c_index"], entry["c_index_uno"]
            row[f"{loss}_ibs"] = entry["ibs"]
            folds = cv.folds
        row["meanpool_cox_c"] = mean_pooled_cox(bags, labels, folds)
        print(pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        rows.append(row)
    table = pd.DataFrame(rows)
    print("mean over seeds:")
    print(table.drop(columns="seed").mean().to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
