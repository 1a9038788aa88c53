"""Published laws beside fitted ones: the coefficient sets of :mod:`analysis.published` evaluated on the same
runs as the fitted laws, and exponents side by side with the fitted ones' bootstrap intervals.

- :func:`predict_published` predicts a runs table with a published set (with the set's own Ê constants where
  its law has them, e.g. Ludziejewski et al. 2025's E_start, E_max);
- :func:`published_rows` scores every applicable set on the held-out runs of a split (the rows
  ``moelab fit --compare`` adds below the fitted laws);
- :func:`exponent_rows` lists, per fitted law, each exponent and the compute-optimal allocation exponents
  (N_opt ∝ C^n, D_opt ∝ C^d, from C = 6ND) with the bootstrap interval, beside every published value of the
  same quantity (Hunyuan-Large's allocation law among them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.laws import CLARK_E_MAX, CLARK_E_START, LAWS, log_e_hat
from analysis.published import PUBLISHED, Published
from analysis.validate import default_split

__all__ = [
    "EXPONENTS", "default_holdout", "exponent_rows", "exponent_table", "predict_published", "published_rows",
]  # fmt: skip

# The exponents of each law (log-log slopes); the rest are scales and offsets.
EXPONENTS = {
    "chinchilla": ("alpha", "beta"),
    "granularity": ("alpha", "beta", "gamma"),
    "clark": ("a", "b", "c"),
    "joint_moe": ("alpha", "beta", "delta", "gamma", "omega", "zeta"),
    "shared_ratio": ("alpha", "beta", "delta", "gamma", "omega", "zeta"),
}
ALLOCATION_E = (
    16  # routed experts at which the E-dependent laws' allocation exponents are read (Hunyuan-Large)
)


def applicable(pub: Published, df: pd.DataFrame) -> str | None:
    """None when ``pub`` can predict ``df`` (its law's columns are present and finite), else the reason."""
    if pub.law not in LAWS:
        return f"{pub.law} law: no loss prediction"
    law = LAWS[pub.law]
    for c in law.columns:
        if c not in df.columns:
            return f"no column {c}"
        v = np.asarray(df[c], dtype=np.float64)
        if c != "shared_ratio" and not np.all(np.isfinite(v)):
            return f"column {c} has missing values"
    return None


def predict_published(pub: Published, df: pd.DataFrame) -> np.ndarray:
    """Loss predicted for the runs ``df`` by the published set ``pub``."""
    law = LAWS[pub.law]
    X = law.features(df)
    if pub.e_hat is not None and law.name in ("joint_moe", "shared_ratio"):
        E = np.asarray(df["n_experts"], dtype=np.float64)
        X[:, 2] = log_e_hat(np, E, *pub.e_hat)  # the set's own Ê constants, not Clark's S-BASE ones
    return law.predict(pub.params, X)


def _errors(pred: np.ndarray, obs: np.ndarray) -> dict:
    rel = pred / obs - 1
    return {
        "rmse": float(np.sqrt(np.mean((pred - obs) ** 2))),
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "median_abs_rel_error": float(np.median(np.abs(rel))),
    }


def published_rows(df: pd.DataFrame, test: pd.DataFrame, laws=None) -> list[dict]:
    """One row per published set of a law in ``laws`` (default: all) that can predict ``df``: its error on
    the held-out runs ``test`` and on all runs, no parameter fitted. Inapplicable sets say why."""
    rows = []
    for pub in PUBLISHED.values():
        if pub.law not in LAWS or (laws is not None and pub.law not in laws):
            continue
        why = applicable(pub, df)
        row = {"law": pub.law, "fit": f"published: {pub.key}", "n_params": 0}
        if why:
            rows.append({**row, "skipped": why})
            continue
        obs_t = test["loss"].to_numpy(dtype=np.float64)
        obs_a = df["loss"].to_numpy(dtype=np.float64)
        keep_t, keep_a = np.isfinite(obs_t), np.isfinite(obs_a)
        ho = _errors(predict_published(pub, test)[keep_t], obs_t[keep_t])
        al = _errors(predict_published(pub, df)[keep_a], obs_a[keep_a])
        rows.append(
            {
                **row,
                "n_held_out": int(keep_t.sum()),
                "held_out_rmse": ho["rmse"],
                "held_out_mean_abs_rel_error": ho["mean_abs_rel_error"],
                "held_out_median_abs_rel_error": ho["median_abs_rel_error"],
                "all_runs_mean_abs_rel_error": al["mean_abs_rel_error"],
                "skipped": None,
            }
        )
    return rows


def _allocation(law: str, p: dict) -> tuple[float, float] | None:
    """(n, d) with N_opt ∝ C^n, D_opt ∝ C^d for C = 6ND (Hoffmann et al. 2022, eq. 4), for ``law``'s
    parameters ``p`` (arrays allowed); E-dependent laws at E = :data:`ALLOCATION_E` with their Ê."""
    if law in ("chinchilla", "granularity"):
        a, b = p["alpha"], p["beta"]
    elif law in ("joint_moe", "shared_ratio"):
        lE = float(log_e_hat(np, ALLOCATION_E, CLARK_E_START, CLARK_E_MAX))
        a, b = -(p["alpha"] + p["gamma"] * lE), -(p["beta"] + p["zeta"] * lE)
    else:
        return None
    return b / (a + b), a / (a + b)


def _published_allocation(pub: Published) -> tuple[float, float] | None:
    if pub.law == "allocation":
        return pub.params["n_exp"], pub.params["d_exp"]
    if pub.law in ("joint_moe", "shared_ratio") and pub.e_hat is not None:
        lE = float(log_e_hat(np, ALLOCATION_E, *pub.e_hat))
        a = -(pub.params["alpha"] + pub.params["gamma"] * lE)
        b = -(pub.params["beta"] + pub.params["zeta"] * lE)
        return b / (a + b), a / (a + b)
    return _allocation(pub.law, pub.params)


def exponent_rows(results: dict) -> list[dict]:
    """Rows (law, quantity, fitted, interval, published) for each fitted law in ``results`` (name ->
    :class:`analysis.fitting.FitResult`); the interval is the bootstrap's percentile interval when the fit has
    one. ``published`` maps set key -> value: the law's own sets for its exponents, every set with an
    allocation law for the allocation exponents."""
    rows = []
    for name, res in results.items():
        if name not in EXPONENTS:
            continue
        boot = res.bootstrap
        samples = None
        if boot is not None:
            samples = {k: np.asarray(boot.samples)[:, i] for i, k in enumerate(boot.names)}
        own = [p for p in PUBLISHED.values() if p.law == name]
        for q in EXPONENTS[name]:
            lo_hi = None
            if samples is not None:
                lo, hi = boot.interval(samples[q])
                lo_hi = [float(lo), float(hi)]
            rows.append(
                {
                    "law": name,
                    "quantity": q,
                    "fitted": float(res.params[q]),
                    "interval": lo_hi,
                    "published": {p.key: float(p.params[q]) for p in own if q in p.params},
                }
            )
        fitted = _allocation(name, res.params)
        if fitted is None:
            continue
        boot_alloc = _allocation(name, samples) if samples is not None else None
        others = {p.key: _published_allocation(p) for p in PUBLISHED.values()}
        suffix = f" (E = {ALLOCATION_E})" if name in ("joint_moe", "shared_ratio") else ""
        for j, q in enumerate(("N_opt ∝ C^n: n", "D_opt ∝ C^d: d")):
            lo_hi = None
            if boot_alloc is not None:
                lo, hi = boot.interval(np.asarray(boot_alloc[j]))
                lo_hi = [float(lo), float(hi)]
            rows.append(
                {
                    "law": name,
                    "quantity": q + suffix,
                    "fitted": float(fitted[j]),
                    "interval": lo_hi,
                    "published": {k: float(v[j]) for k, v in others.items() if v is not None},
                }
            )
    return rows


def exponent_table(rows: list[dict]) -> pd.DataFrame:
    """:func:`exponent_rows` as a printable table (one column of published values)."""

    def fmt(v):
        return f"{v:.4g}"

    return pd.DataFrame(
        [
            {
                "law": r["law"],
                "quantity": r["quantity"],
                "fitted": fmt(r["fitted"]),
                "95% interval": f"[{fmt(r['interval'][0])}, {fmt(r['interval'][1])}]"
                if r["interval"]
                else "—",
                "published": "; ".join(f"{k} {fmt(v)}" for k, v in r["published"].items()) or "—",
            }
            for r in rows
        ]
    )


def default_holdout(df: pd.DataFrame, fraction: float = 0.2) -> dict:
    """How a table's largest runs are held out (:func:`analysis.validate.default_split`, which holds the rule;
    this keeps the bench's 20% default)."""
    return default_split(df, fraction)
