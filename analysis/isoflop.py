"""Chinchilla's Approach 2 (IsoFLOP profiles; Hoffmann et al. 2022, section 3.2).

Runs are grouped by architecture (:func:`analysis.domain.arch_key`) and compute budget: the sweep's nominal
budget (``nominal_flops``, the isoflop generator's axis) where the table has it, else the ``budget`` column,
else windows of compute at most 0.06 decades wide (:func:`budgets_of`). In each group with at least 3
distinct sizes, a parabola of loss in log N gives the loss-minimising N*(C); the tokens at N* come from the
budget's own runs (log D is linear in log N along an IsoFLOP profile: D = C / cost per token), so every budget
uses its own cost rather than one median C/(ND). Minima outside the sizes tried are extrapolations of the
parabola: they are reported and left out of the power laws. Least squares of log N* and log D* on log C give
N_opt = k_N C^a and D_opt = k_D C^b per architecture.

``compute`` re-expresses each minimum's compute in another compute model (e.g. ``"hunyuan-large"``: the
paper's C = k N* D* + a D*) before the power laws are fitted, so exponents can be set beside a paper's at the
compute model the paper used. ``compute_col`` instead puts the laws on another per-run compute coordinate,
e.g. ``c_min`` (``analysis.hyper``): Hunyuan-Large fits N_opt and D_opt on C_min = C / (1 + B/B_crit(L));
budgets are still grouped by C. The bootstrap resamples runs within each group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.domain import arch_key
from analysis.frontier import cost_per_token
from analysis.load import compute_of
from moelab.errors import MoelabError

PARAMS = ("k_N", "a", "k_D", "b")
MIN_SIZES = 3


BUDGET_TOL_DEX = 0.06  # runs without a nominal budget share one when within 0.06 decades (15%) of its first


def budgets_of(df: pd.DataFrame) -> np.ndarray:
    """A budget label per run: the nominal budget (``nominal_flops``), the ``budget`` column, or, for runs
    that name none, windows of compute at most :data:`BUDGET_TOL_DEX` wide (from the smallest up), so a grid
    of N x D whose products happen to lie close never chains into one wide "budget"."""
    if "nominal_flops" in df.columns:
        nom = pd.to_numeric(df["nominal_flops"], errors="coerce").to_numpy(np.float64)
        if np.all(np.isfinite(nom)):
            return nom
    if "budget" in df.columns:
        return df["budget"].to_numpy(np.float64)
    C = compute_of(df)
    logc = np.log10(C)
    order = np.argsort(logc, kind="stable")
    out = np.empty(len(C))
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or logc[order[i]] - logc[order[start]] > BUDGET_TOL_DEX:
            members = order[start:i]
            out[members] = float(np.median(C[members]))
            start = i
    return out


def _group_minimum(logN: np.ndarray, logD: np.ndarray, loss: np.ndarray) -> tuple | None:
    """(log N*, log D*, L_min, inside, coef) of one IsoFLOP profile, or None without a valley."""
    if len(np.unique(logN)) < MIN_SIZES:
        return None
    coef = np.polyfit(logN, loss, 2)
    if coef[0] <= 0:
        return None  # no minimum: the profile is not a valley
    x = -coef[1] / (2 * coef[0])
    slope, icpt = np.polyfit(logN, logD, 1)  # this budget's own cost per token along the profile
    inside = bool(logN.min() <= x <= logN.max())
    return x, icpt + slope * x, float(np.polyval(coef, x)), inside, coef


def _minima(groups, logN, logD, loss, C, idx=None, X=None):
    """Rows (group, log C, log N*, log D*, L_min, inside, coef, log X) of every group with a valley, X the
    laws' compute coordinate (C unless given); ``idx`` maps each group to the rows it draws (a resample)."""
    X = C if X is None else X
    out = []
    for g, members in groups.items():
        m = members if idx is None else idx[g]
        got = _group_minimum(logN[m], logD[m], loss[m])
        if got is not None:
            out.append((g, float(np.log(np.median(C[m]))), *got, float(np.log(np.median(X[m])))))
    return out


def _powerlaw(mins: list, compute) -> np.ndarray:
    """(k_N, a, k_D, b) through interior minima [(log C, log N*, log D*), ...], C in ``compute``'s model."""
    m = np.array(mins, np.float64).reshape(-1, 3)
    logC, logN, logD = m.T
    if compute is not None:
        logC = np.log(cost_per_token(np.exp(logN), compute)) + logD
    if len(np.unique(logC)) < 2:
        return np.full(4, np.nan)
    a, log_kN = np.polyfit(logC, logN, 1)
    b, log_kD = np.polyfit(logC, logD, 1)
    return np.array([np.exp(log_kN), a, np.exp(log_kD), b])


@dataclass
class IsoFlopResult:
    """The Approach-2 fit: power laws through the per-budget minima, per architecture (reported like a
    FitResult for the architecture with the most usable budgets, ``arch``)."""

    params: dict[str, float]
    minima: pd.DataFrame  # arch, C, N_opt, D_opt, L_min, inside, n_runs, c2, c1, c0, run_ids
    n_points: int
    arch: str
    per_arch: dict[str, dict] = field(default_factory=dict)  # arch -> {params, samples, n_budgets}
    compute: object = None  # the compute model of C in the power laws (None: the runs' own flops)
    samples: np.ndarray | None = None
    confidence: float = 0.95
    warnings: list[str] = field(default_factory=list)

    def _iv(self, samples):
        """Percentile intervals over the resamples that gave a power law (NaN with fewer than 2)."""
        ok = samples[np.all(np.isfinite(samples), axis=1)]
        if len(ok) < 2:
            return dict.fromkeys(PARAMS, (float("nan"), float("nan")))
        q = 100 * (1 - self.confidence) / 2
        lo, hi = np.percentile(ok, [q, 100 - q], axis=0)
        return {k: (float(x), float(y)) for k, x, y in zip(PARAMS, lo, hi, strict=True)}

    def n_valid(self, arch: str | None = None) -> int:
        """Bootstrap resamples that gave a power law (>= 2 budgets with an interior minimum)."""
        s = self.samples if arch is None else self.per_arch[arch].get("samples")
        return 0 if s is None else int(np.all(np.isfinite(s), axis=1).sum())

    @property
    def stderr(self):
        if self.samples is None:
            return None
        ok = self.samples[np.all(np.isfinite(self.samples), axis=1)]
        if len(ok) < 2:
            return dict.fromkeys(PARAMS, float("nan"))
        return {k: float(v) for k, v in zip(PARAMS, np.std(ok, axis=0, ddof=1), strict=True)}

    @property
    def intervals(self):
        return None if self.samples is None else self._iv(self.samples)

    def arch_intervals(self, arch: str):
        s = self.per_arch[arch].get("samples")
        return None if s is None else self._iv(s)

    def to_dict(self) -> dict:
        iv = self.intervals
        return {
            "law": "isoflop",
            "params": self.params,
            "stderr": self.stderr,
            "intervals": None if iv is None else {k: list(v) for k, v in iv.items()},
            "n_points": self.n_points,
            "n_budgets": int(self.per_arch[self.arch]["n_budgets"]),
            "arch": self.arch,
            "compute": self.compute if isinstance(self.compute, str | float | int | None) else "callable",
            "per_arch": {
                a: {
                    "params": v["params"],
                    "n_budgets": v["n_budgets"],
                    "n_bootstrap_valid": self.n_valid(a),
                    "intervals": None
                    if v.get("samples") is None
                    else {k: list(x) for k, x in self.arch_intervals(a).items()},
                }
                for a, v in self.per_arch.items()
            },
            "minima": self.minima.drop(columns=["run_ids"]).to_dict(orient="records"),
            "warnings": self.warnings,
        }


@dataclass
class _Profiles:
    groups: dict  # (arch, budget) -> row indices
    logN: np.ndarray
    logD: np.ndarray
    loss: np.ndarray
    C: np.ndarray
    mins: list
    table: pd.DataFrame
    n_points: int
    X: np.ndarray | None = None


def _profiles(df: pd.DataFrame, loss_col: str = "loss", compute_col: str | None = None) -> _Profiles:
    for c in ("active_params", "tokens", loss_col, *([compute_col] if compute_col else [])):
        if c not in df.columns:
            raise MoelabError(f"isoflop needs column {c}; the table has {', '.join(map(str, df.columns))}")
    df = df[np.isfinite(df[loss_col].to_numpy(np.float64))].reset_index(drop=True)
    C = compute_of(df)
    logN = np.log(df["active_params"].to_numpy(np.float64))
    logD = np.log(df["tokens"].to_numpy(np.float64))
    loss = df[loss_col].to_numpy(np.float64)
    arch = arch_key(df).to_numpy()
    budget = budgets_of(df)
    keys = pd.Series(list(zip(arch, budget, strict=True)))
    groups = {k: np.flatnonzero(keys == k) for k in dict.fromkeys(keys) if np.isfinite(k[1])}
    X = None if compute_col is None else df[compute_col].to_numpy(np.float64)
    mins = _minima(groups, logN, logD, loss, C, X=X)
    ids = df["run_id"].astype(str).to_numpy() if "run_id" in df.columns else df.index.astype(str).to_numpy()
    table = pd.DataFrame(
        [
            {
                "arch": g[0],
                "C": float(np.exp(lc)),
                "N_opt": float(np.exp(x)),
                "D_opt": float(np.exp(y)),
                "L_min": lmin,
                "inside": inside,
                "n_runs": len(groups[g]),
                "c2": coef[0],
                "c1": coef[1],
                "c0": coef[2],
                "run_ids": list(ids[groups[g]]),
            }
            | ({compute_col: float(np.exp(lx))} if compute_col else {})
            for g, lc, x, y, lmin, inside, coef, lx in mins
        ],
        columns=["arch", "C", "N_opt", "D_opt", "L_min", "inside", "n_runs", "c2", "c1", "c0", "run_ids"]
        + ([compute_col] if compute_col else []),
    )
    return _Profiles(groups, logN, logD, loss, C, mins, table, len(df), X)


def isoflop_minima(df: pd.DataFrame, loss_col: str = "loss") -> pd.DataFrame:
    """The minimum of every IsoFLOP profile (architecture x budget with >= 3 sizes and a valley): arch, C,
    N_opt, D_opt, L_min, inside (within the sizes tried), n_runs, the parabola's c2, c1, c0 in log N, and
    the run_ids of the profile."""
    return _profiles(df, loss_col).table


def fit_isoflop(
    df: pd.DataFrame,
    *,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    loss_col: str = "loss",
    compute=None,
    compute_col: str | None = None,
) -> IsoFlopResult:
    """Approach 2 on runs with ``active_params``, ``tokens``, ``loss`` (and ``flops`` or ``budget``); the
    power laws on C, on C in the compute model ``compute``, or on the column ``compute_col``."""
    if compute is not None and compute_col is not None:
        raise MoelabError("isoflop: give compute (a compute model) or compute_col (a column), not both")
    pr = _profiles(df, loss_col, compute_col)
    groups, logN, logD, loss, C, mins, table = pr.groups, pr.logN, pr.logD, pr.loss, pr.C, pr.mins, pr.table
    per_arch = {}
    for a in dict.fromkeys(table["arch"]):
        use = [(lx, x, y) for g, _, x, y, _, inside, _, lx in mins if g[0] == a and inside]
        if len({round(u[0], 9) for u in use}) >= 2:
            per_arch[a] = {"params": dict(zip(PARAMS, map(float, _powerlaw(use, compute)), strict=True))}
            per_arch[a]["n_budgets"] = len(use)
    if not per_arch:
        raise MoelabError(
            "isoflop needs >= 2 compute budgets of one architecture, each with >= 3 model sizes and a loss "
            "valley whose minimum lies inside the sizes tried"
        )
    main = max(per_arch, key=lambda a: (per_arch[a]["n_budgets"], int((table["arch"] == a).sum())))
    res = IsoFlopResult(
        params=per_arch[main]["params"],
        minima=table,
        n_points=pr.n_points,
        arch=main,
        per_arch=per_arch,
        compute=compute,
        confidence=confidence,
    )
    outside = table[~table["inside"]]
    if len(outside):
        res.warnings.append(
            f"{len(outside)} IsoFLOP minimum(s) lie outside the sizes tried at their budget and were left "
            "out of the power laws: widen the size grid there"
        )
    if bootstrap:
        rng = np.random.default_rng(seed)
        samples = {a: np.full((bootstrap, 4), np.nan) for a in per_arch}
        for s in range(bootstrap):
            idx = {g: rng.choice(m, size=len(m), replace=True) for g, m in groups.items()}
            got = _minima(groups, logN, logD, loss, C, idx, pr.X)
            for a in per_arch:
                use = [(lx, x, y) for g, _, x, y, _, inside, _, lx in got if g[0] == a and inside]
                if len({round(u[0], 9) for u in use}) >= 2:
                    samples[a][s] = _powerlaw(use, compute)
        for a in per_arch:
            per_arch[a]["samples"] = samples[a]
        res.samples = samples[main]
    return res
