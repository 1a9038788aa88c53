"""Held-out validation: fit on the lower-compute runs, predict the highest-compute ones.

A law is only as good as its extrapolation, so laws are compared by their error on held-out runs at the top
of the compute range, not by their fit error (which always favours more parameters).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.fit import DELTA, FitResult, fit
from analysis.laws import get_law
from moelab.errors import MoelabError


def compute_of(df: pd.DataFrame) -> np.ndarray:
    """Training compute per run: the ``flops`` column where present, else 6 N D (Hoffmann et al. 2022)."""
    if "flops" in df.columns and np.all(np.isfinite(df["flops"].to_numpy(dtype=np.float64))):
        return df["flops"].to_numpy(dtype=np.float64)
    return 6.0 * df["active_params"].to_numpy(dtype=np.float64) * df["tokens"].to_numpy(dtype=np.float64)


def split_by_compute(
    df: pd.DataFrame, fraction: float | None = 0.2, threshold: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held_out): runs with compute >= ``threshold``, or the top ``fraction`` of runs by compute."""
    C = compute_of(df)
    if threshold is not None:
        test = float(threshold) <= C
    else:
        if fraction is None or not 0 < fraction < 1:
            raise MoelabError(f"holdout fraction must be in (0, 1), got {fraction}")
        k = max(1, int(round(fraction * len(df))))
        test = np.zeros(len(df), bool)
        test[np.argsort(C, kind="stable")[-k:]] = True
    if test.all() or not test.any():
        n_train, n_test = int((~test).sum()), int(test.sum())
        raise MoelabError(f"holdout leaves {n_train} training and {n_test} held-out runs; both must be > 0")
    return df[~test], df[test]


@dataclass
class Holdout:
    """Predicted vs observed loss of each held-out run and summary errors."""

    law: str
    table: pd.DataFrame  # run_id, compute, observed, predicted, rel_error
    n_train: int

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean((self.table["predicted"] - self.table["observed"]) ** 2)))

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.table["rel_error"])))

    def to_dict(self) -> dict:
        return {
            "law": self.law,
            "n_train": self.n_train,
            "n_held_out": len(self.table),
            "rmse": self.rmse,
            "mean_abs_rel_error": self.mean_abs_rel_error,
            "runs": self.table.to_dict(orient="records"),
        }


def holdout(
    df: pd.DataFrame,
    law="chinchilla",
    *,
    fraction: float | None = 0.2,
    threshold: float | None = None,
    delta: float = DELTA,
    bootstrap: int = 0,
    seed: int = 0,
) -> FitResult:
    """Fit ``law`` on all but the highest-compute runs; the result's ``holdout`` scores the held-out ones."""
    train, test = split_by_compute(df, fraction, threshold)
    res = fit(train, law, delta=delta, bootstrap=bootstrap, seed=seed)
    test = test[np.isfinite(test["loss"].to_numpy(dtype=np.float64))]
    obs = test["loss"].to_numpy(dtype=np.float64)
    pred = res.predict(test)
    ids = test["run_id"].astype(str).to_numpy() if "run_id" in test.columns else test.index.astype(str)
    table = pd.DataFrame(
        {
            "run_id": ids,
            "compute": compute_of(test),
            "observed": obs,
            "predicted": pred,
            "rel_error": pred / obs - 1,
        }
    )
    res.holdout = Holdout(law=res.law.name, table=table, n_train=len(train))
    return res


DEFAULT_LAWS = ("chinchilla", "granularity", "clark", "joint_moe", "shared_ratio")


def compare_laws(df: pd.DataFrame, laws=DEFAULT_LAWS, results: dict | None = None, **kw) -> pd.DataFrame:
    """Held-out error of each law on the same split, best first.

    Laws the data cannot support are listed with the reason (missing or constant column, too few runs).
    ``results``, when given, receives each fitted law's :class:`FitResult` (fitted on the training split).
    """
    rows = []
    for name in laws:
        law = get_law(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = holdout(df, law, **kw)
        except MoelabError as exc:
            rows.append({"law": law.name, "n_params": law.n_params, "skipped": str(exc)})
            continue
        h = res.holdout
        if results is not None:
            results[law.name] = res
        rows.append(
            {
                "law": law.name,
                "n_params": law.n_params,
                "n_train": h.n_train,
                "n_held_out": len(h.table),
                "train_objective": res.objective,
                "held_out_rmse": h.rmse,
                "held_out_mean_abs_rel_error": h.mean_abs_rel_error,
                "skipped": None,
            }
        )
    out = pd.DataFrame(rows)
    if "held_out_rmse" in out:
        out = out.sort_values("held_out_rmse", na_position="last").reset_index(drop=True)
    return out
