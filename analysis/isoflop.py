"""Chinchilla's Approach 2 (IsoFLOP profiles; Hoffmann et al. 2022, section 3.2).

Runs are grouped by compute budget (the ``budget`` column if present, else compute rounded to 2 significant
digits). In each budget with at least 3 distinct model sizes a parabola of loss in log N gives the
loss-minimising N*(C); least squares of log N* and log D* = log(C / (kappa N*)) on log C give the power laws
N_opt = k_N C^a and D_opt = k_D C^b (kappa = median C/(N D) of the runs). The bootstrap resamples runs within
budgets. ``compute_col`` puts the laws on another compute coordinate, e.g. ``c_min`` (``analysis.hyper``):
Hunyuan-Large fits N_opt and D_opt on C_min = C / (1 + B/B_crit(L)); budgets are still grouped by C.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.validate import compute_of
from moelab.errors import MoelabError

PARAMS = ("k_N", "a", "k_D", "b")


def budgets_of(df: pd.DataFrame) -> np.ndarray:
    """A budget label per run: ``budget`` if given, else compute rounded to 2 significant digits."""
    if "budget" in df.columns:
        return df["budget"].to_numpy(np.float64)
    return np.array([float(f"{c:.2g}") for c in compute_of(df)])


def _minima(label, logN, loss, C, X=None):
    """Per budget: (log X, log N*, L_min, log C) with X the laws' compute coordinate (C unless given)."""
    X = C if X is None else X
    out = []
    for b in np.unique(label):
        m = label == b
        if len(np.unique(logN[m])) < 3:
            continue
        c2, c1, c0 = np.polyfit(logN[m], loss[m], 2)
        if c2 <= 0:
            continue  # no minimum: the budget's profile is not a valley
        logX, logC = np.log(np.median(X[m])), np.log(np.median(C[m]))
        out.append((logX, -c1 / (2 * c2), c0 - c1 * c1 / (4 * c2), logC))
    return np.array(out).reshape(-1, 4)


def _powerlaws(mins, kappa):
    logX, logN, logC = mins[:, 0], mins[:, 1], mins[:, 3]
    a, log_kN = np.polyfit(logX, logN, 1)
    b, log_kD = np.polyfit(logX, logC - np.log(kappa) - logN, 1)
    return np.array([np.exp(log_kN), a, np.exp(log_kD), b])


@dataclass
class IsoFlopResult:
    """The Approach-2 fit: power laws through the per-budget minima (reported like a FitResult)."""

    params: dict[str, float]
    minima: pd.DataFrame  # C, N_opt, L_min per budget
    n_points: int
    kappa: float
    samples: np.ndarray | None = None
    confidence: float = 0.95
    warnings: list[str] = field(default_factory=list)

    @property
    def stderr(self):
        if self.samples is None:
            return None
        return {k: float(v) for k, v in zip(PARAMS, np.nanstd(self.samples, axis=0, ddof=1), strict=True)}

    @property
    def intervals(self):
        if self.samples is None:
            return None
        q = 100 * (1 - self.confidence) / 2
        lo, hi = np.nanpercentile(self.samples, [q, 100 - q], axis=0)
        return {k: (float(x), float(y)) for k, x, y in zip(PARAMS, lo, hi, strict=True)}

    def to_dict(self) -> dict:
        iv = self.intervals
        return {
            "law": "isoflop",
            "params": self.params,
            "stderr": self.stderr,
            "intervals": None if iv is None else {k: list(v) for k, v in iv.items()},
            "n_points": self.n_points,
            "n_budgets": len(self.minima),
            "minima": self.minima.to_dict(orient="records"),
            "warnings": self.warnings,
        }


def fit_isoflop(
    df: pd.DataFrame,
    *,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    loss_col: str = "loss",
    compute_col: str | None = None,
) -> IsoFlopResult:
    """Approach 2 on runs with ``active_params``, ``tokens``, ``loss`` (and ``flops`` or ``budget``); the
    power laws on ``compute_col`` (default: C) when given."""
    for c in ("active_params", "tokens", loss_col, *([compute_col] if compute_col else [])):
        if c not in df.columns:
            raise MoelabError(f"isoflop needs column {c}; the table has {', '.join(map(str, df.columns))}")
    df = df[np.isfinite(df[loss_col].to_numpy(np.float64))]
    C = compute_of(df)
    N = df["active_params"].to_numpy(np.float64)
    kappa = float(np.median(C / (N * df["tokens"].to_numpy(np.float64))))
    label, logN, loss = budgets_of(df), np.log(N), df[loss_col].to_numpy(np.float64)
    X = None if compute_col is None else df[compute_col].to_numpy(np.float64)
    mins = _minima(label, logN, loss, C, X)
    if len(mins) < 2:
        raise MoelabError("isoflop needs >= 2 compute budgets, each with >= 3 model sizes and a loss valley")
    res = IsoFlopResult(
        params=dict(zip(PARAMS, map(float, _powerlaws(mins, kappa)), strict=True)),
        minima=pd.DataFrame(
            {"C": np.exp(mins[:, 3]), "N_opt": np.exp(mins[:, 1]), "L_min": mins[:, 2]}
            | ({compute_col: np.exp(mins[:, 0])} if compute_col else {})
        ),
        n_points=len(df),
        kappa=kappa,
        confidence=confidence,
    )
    if bootstrap:
        rng = np.random.default_rng(seed)
        groups = [np.flatnonzero(label == b) for b in np.unique(label)]
        samples = np.full((bootstrap, 4), np.nan)
        for s in range(bootstrap):
            idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
            m = _minima(label[idx], logN[idx], loss[idx], C[idx], None if X is None else X[idx])
            if len(m) >= 2:
                samples[s] = _powerlaws(m, kappa)
        res.samples = samples
    return res
