"""MoE against dense, run by run: each MoE run beside the dense run of the same nominal size, tokens and seed.

The laws compare architectures through a fitted surface; this compares them where a sweep trained both: the
loss difference of a MoE run and its dense *twin* (the dense run at the same activated size N, training tokens
D and seed), so seed noise cancels where the seeds match and nothing is fitted. Sizes and tokens are the
sweep's nominal values (``nominal_active_params``, ``nominal_tokens``, which ``moelab.sweep.store`` carries
into the runs table) where a run has them: the family rule realises a nominal 4e4 as 39.9k for E = 8 and 40.1k
dense. Runs without them (another sweep, a CSV) are matched on their realised values within 2%.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NOMINAL = "nominal_"
REL_TOL = 0.02
COLUMNS = ["E", "top_k", "shared", "G", "expert_lr_scale", "N", "D", "seed", "D_per_total_N", "dense", "moe",
           "moe_minus_dense", "run_id", "dense_run_id"]  # fmt: skip


def nominal(df: pd.DataFrame, column: str) -> np.ndarray:
    """``nominal_<column>`` where a run has it, else the realised ``column`` (NaN where neither is one)."""
    if column not in df.columns:
        return np.full(len(df), np.nan)
    real = pd.to_numeric(df[column], errors="coerce").to_numpy(np.float64)
    if NOMINAL + column not in df.columns:
        return real
    asked = pd.to_numeric(df[NOMINAL + column], errors="coerce").to_numpy(np.float64)
    return np.where(np.isfinite(asked), asked, real)


def _near(x: np.ndarray, y: float) -> np.ndarray:
    return np.abs(np.log(x / y)) < np.log1p(REL_TOL)


def moe_vs_dense(df: pd.DataFrame, loss_col: str = "loss") -> pd.DataFrame:
    """One row per MoE run with a dense twin: its arm (E, top_k, shared experts, nominal granularity and
    expert LR scale), N, D, seed, tokens per total non-embedding parameter, both losses and
    ``moe_minus_dense`` (negative: the MoE run is ahead), ordered by arm, D, N and seed. Runs with a
    non-finite loss are left out."""
    if df.empty or "n_experts" not in df.columns:
        return pd.DataFrame(columns=COLUMNS)
    t = df[np.isfinite(pd.to_numeric(df[loss_col], errors="coerce"))].reset_index(drop=True)
    N, D = nominal(t, "active_params"), nominal(t, "tokens")
    seed = pd.to_numeric(t.get("seed", pd.Series(0, index=t.index)), errors="coerce").fillna(0).to_numpy()
    E = pd.to_numeric(t["n_experts"], errors="coerce").to_numpy(np.float64)
    ids = t["run_id"].astype(str).to_numpy() if "run_id" in t else t.index.astype(str).to_numpy()
    G, elr = nominal(t, "granularity"), nominal(t, "expert_lr_scale")
    dense = np.flatnonzero(E <= 1)
    rows = []
    for i in np.flatnonzero(E > 1):
        match = dense[_near(N[dense], N[i]) & _near(D[dense], D[i]) & (seed[dense] == seed[i])]
        if not len(match):
            continue
        j = match[0]
        total = float(t["total_params"].iloc[i]) if "total_params" in t else np.nan
        rows.append({
            "E": int(E[i]), "top_k": int(t["top_k"].iloc[i]) if "top_k" in t else 1,
            "shared": int(t["n_shared_experts"].iloc[i]) if "n_shared_experts" in t else 0,
            "G": G[i], "expert_lr_scale": elr[i], "N": N[i], "D": D[i], "seed": int(seed[i]),
            "D_per_total_N": float(t["tokens"].iloc[i]) / total if total > 0 else np.nan,
            "dense": float(t[loss_col].iloc[j]), "moe": float(t[loss_col].iloc[i]),
            "moe_minus_dense": float(t[loss_col].iloc[i] - t[loss_col].iloc[j]),
            "run_id": ids[i], "dense_run_id": ids[j],
        })  # fmt: skip
    order = ["E", "top_k", "shared", "G", "expert_lr_scale", "D", "N", "seed"]
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(order, ignore_index=True)


def gap_trend(twins: pd.DataFrame, at: tuple[tuple[float, float], ...] = (), n_boot: int = 2000,
              seed: int = 0) -> dict | None:  # fmt: skip
    """How the MoE-minus-dense gap of one arm's twins moves with tokens and size, by least squares with a
    pair bootstrap (``n_boot`` resamples of the twin rows, 95% percentile intervals):

    - ``gap = a + b·log10 D + c·log10 N``: ``b`` and ``c`` each with an interval, and ``b + c``, which is 0
      where the gap depends on tokens per parameter D/N alone;
    - ``gap = a1 + s·log10(D / total N)``: the slope ``s`` per decade of tokens per total (not activated)
      non-embedding parameter, its R², and where the fitted gap crosses 0 (``breakeven_D_per_total_N``);
    - ``at``: the two-variable fit's gap at each (N, D) given, with its interval (``gap_at``), an
      extrapolation wherever (N, D) lies outside the twins'.

    None where there are fewer than 5 rows, or fewer than 2 distinct D or N (nothing to separate)."""
    t = twins[np.isfinite(twins["moe_minus_dense"]) & np.isfinite(twins["D_per_total_N"])]
    if len(t) < 5 or t["D"].nunique() < 2 or t["N"].nunique() < 2:
        return None
    y = t["moe_minus_dense"].to_numpy(np.float64)
    lD, lN = np.log10(t["D"].to_numpy(np.float64)), np.log10(t["N"].to_numpy(np.float64))
    lr = np.log10(t["D_per_total_N"].to_numpy(np.float64))
    X2 = np.column_stack([np.ones(len(y)), lD, lN])
    X1 = np.column_stack([np.ones(len(y)), lr])

    def fit(idx):
        b2 = np.linalg.lstsq(X2[idx], y[idx], rcond=None)[0]
        b1 = np.linalg.lstsq(X1[idx], y[idx], rcond=None)[0]
        cross = -b1[0] / b1[1] if b1[1] != 0 else np.nan
        pred = [b2[0] + b2[1] * np.log10(d) + b2[2] * np.log10(n) for n, d in at]
        return np.array([b2[1], b2[2], b2[1] + b2[2], b1[1], cross, *pred])

    point = fit(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if np.ptp(lD[idx]) > 0 and np.ptp(lN[idx]) > 0 and np.ptp(lr[idx]) > 0:
            draws.append(fit(idx))
    lo, hi = np.nanpercentile(np.array(draws), [2.5, 97.5], axis=0)
    resid = y - X1 @ np.linalg.lstsq(X1, y, rcond=None)[0]
    r2 = 1.0 - float(np.sum(resid**2) / np.sum((y - y.mean()) ** 2)) if np.ptp(y) > 0 else np.nan
    names = ("per_decade_D", "per_decade_N", "sum", "per_decade_D_per_total_N", "breakeven_D_per_total_N")
    out = {"n": len(y), "r2_D_per_total_N": r2, "n_boot": len(draws)}
    for k, name in enumerate(names):
        out[name] = float(point[k])
        out[name + "_95"] = [float(lo[k]), float(hi[k])]
    out["breakeven_D_per_total_N"] = float(10 ** point[4])
    out["breakeven_D_per_total_N_95"] = [float(10 ** lo[4]), float(10 ** hi[4])]
    out["gap_at"] = [
        {"N": n, "D": d, "gap": float(point[5 + i]), "gap_95": [float(lo[5 + i]), float(hi[5 + i])]}
        for i, (n, d) in enumerate(at)
    ]
    return out
