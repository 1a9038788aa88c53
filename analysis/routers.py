"""Router recipes compared the way Clark et al. (2022, "Unified Scaling Laws for Routed Language Models",
sec. 4-5) compared theirs: Clark's law fitted per router family, and each family's gain over dense as an
effective parameter count.

Runs are grouped by ``moelab.presets.router_family`` (read from each run's model fields); the dense runs
(n_experts = 1) belong to every family, as in Clark et al., where every router's law passes through the same
dense baseline. Per family the law is

    log10 L = a log10 N + b log10 Ê + c log10 N log10 Ê + d,
    1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max

fitted as the lab fits every law (``analysis.fit``: Huber on log loss, L-BFGS from a grid) with a bootstrap
over the family's runs. Clark et al. fit E_start and E_max per router ("one Ê curve per router"); that needs
at least three expert counts above one, so with fewer the family's law keeps Clark's S-BASE values
(E_start 1.847, E_max 314.5) and fits a, b, c, d (``clark_sbase``), which still gives each router its own
curve of loss against E through b and c.

The gain over dense is the effective parameter count (Clark et al. sec. 5): the dense size N_eq whose
predicted loss equals the family's predicted loss at (N, E), reported as N_eq / N with a bootstrap percentile
interval; the measured loss of each run beside the dense run of the same N is shown as well.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.bootstrap import bootstrap
from analysis.fit import FitResult, fit_arrays, prepare
from analysis.laws import CLARK, CLARK_E_MAX, CLARK_E_START, LN10, Law, log_e_hat
from moelab.errors import MoelabError
from moelab.presets import router_family

__all__ = ["CLARK_SBASE", "RouterFit", "compare_routers", "effective_params", "router_families"]


def _sbase_log_predict(theta, X, xp):
    a, b, c, d = (theta[..., i, None] for i in range(4))
    log10N, E = X[:, 0], X[:, 1]
    log10E = log_e_hat(xp, E, CLARK_E_START, CLARK_E_MAX) / LN10
    return LN10 * (a * log10N + b * log10E + c * log10N * log10E + d)


#: Clark's law with the saturation of Ê held at Clark et al.'s S-BASE fit (fewer than three expert counts).
CLARK_SBASE = Law(
    name="clark_sbase",
    title="log10 L = a log10 N + b log10 Ê + c log10 N log10 Ê + d (E_start, E_max of S-BASE)",
    reference="Clark et al. 2022, eq. 9, with their S-BASE E_start = 1.847, E_max = 314.5",
    columns=("active_params", "n_experts"),
    raw=("a", "b", "c", "d"),
    params=("a", "b", "c", "d"),
    grid=CLARK.grid[:4],
    bounds=CLARK.bounds[:4],
    log_predict=_sbase_log_predict,
    to_params=lambda t: np.array(t, dtype=np.float64, copy=True),
    from_params=lambda p: np.array(p, dtype=np.float64, copy=True),
    features=CLARK.features,
    needs_variation=("active_params", "n_experts"),
    max_starts=64,
)


def router_families(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """family -> its MoE runs plus every dense run (families with MoE runs only; needs a dense run)."""
    fam = df.apply(lambda r: router_family(r.to_dict()), axis=1)
    dense = df[fam == "dense"]
    if dense.empty:
        return {}
    out = {}
    for name in sorted(set(fam) - {"dense"}):
        out[name] = pd.concat([dense, df[fam == name]]).assign(router=lambda x, n=name: n)
    return out


def _theta_samples(res: FitResult) -> np.ndarray:
    return res.law.from_params(res.bootstrap.samples)


def _e_hat_1(law: Law, theta: np.ndarray) -> np.ndarray:
    """log10 Ê at E = 1 (dense) under each raw parameter vector [..., P]."""
    if law.name == "clark":
        e_start, e_max = np.exp(theta[..., 4]), np.exp(theta[..., 5])
    else:
        e_start, e_max = CLARK_E_START, CLARK_E_MAX
    return log_e_hat(np, np.ones_like(theta[..., 0]), e_start, e_max) / LN10


def effective_params(law: Law, theta: np.ndarray, N, E) -> np.ndarray:
    """N_eq: the dense size whose predicted loss equals the predicted loss at (N, E), for raw parameters
    ``theta`` [S, P] and points N, E [M] -> [S, M]. Clark's law is linear in log10 N at fixed E, so
    log10 N_eq = (log10 L(N, E) - b e1 - d) / (a + c e1) with e1 = log10 Ê(1)."""
    theta = np.atleast_2d(theta)
    X = np.stack([np.log10(np.asarray(N, np.float64)), np.asarray(E, np.float64)], axis=-1)
    log10_L = law.log_predict(theta, X, np) / LN10  # [S, M]
    a, b, c, d = (theta[:, i, None] for i in range(4))
    e1 = _e_hat_1(law, theta)[:, None]
    return 10.0 ** ((log10_L - b * e1 - d) / (a + c * e1))


@dataclass
class RouterFit:
    """Clark's law fitted to one router family (its MoE runs and the dense runs) with a bootstrap."""

    family: str
    res: FitResult
    runs: pd.DataFrame
    gains: pd.DataFrame  # per (N, E) of the family: measured losses and the effective-parameter gain
    warnings: list[str] = field(default_factory=list)

    @property
    def law(self) -> Law:
        return self.res.law

    def curve(self, N: float, E: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
        """Predicted loss at (N, E) [M] and its bootstrap percentile band: (loss, lo, hi)."""
        X = np.stack([np.full(len(E), np.log10(N)), np.asarray(E, np.float64)], axis=-1)
        mid = np.exp(self.law.log_predict(self.res.theta[None], X, np))[0]
        samp = np.exp(self.law.log_predict(_theta_samples(self.res), X, np))
        q = 100 * (1 - confidence) / 2
        lo, hi = np.nanpercentile(samp, [q, 100 - q], axis=0)
        return mid, lo, hi

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            **self.res.to_dict(),
            "gains": self.gains.to_dict(orient="records"),
            "fit_warnings": list(self.warnings),
        }


def fit_family(name: str, runs: pd.DataFrame, *, n_boot: int = 200, seed: int = 0) -> RouterFit:
    """Clark's law for one family (full law with >= 3 expert counts above one, else ``clark_sbase``)."""
    moe = runs[runs["n_experts"] > 1]
    full = moe["n_experts"].nunique() >= 3 and len(runs) >= CLARK.n_params + 1
    law = CLARK if full else CLARK_SBASE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fit_arrays(law, prepare(runs, law), max_starts=law.max_starts)
        res.bootstrap = bootstrap(res, n_boot, seed=seed)
    theta_s = _theta_samples(res)
    dense = runs[runs["n_experts"] == 1].groupby("active_params")["loss"].mean()
    cells = moe.groupby(["active_params", "n_experts"], as_index=False)["loss"].mean()
    N, E = cells["active_params"].to_numpy(np.float64), cells["n_experts"].to_numpy(np.float64)
    point = effective_params(law, res.theta[None], N, E)[0] / N
    samp = effective_params(law, theta_s, N, E) / N
    lo, hi = res.bootstrap.interval(samp)
    ref = np.array([_nearest(dense, n) for n in N])
    gains = cells.assign(
        loss_dense=ref,
        loss_change=cells["loss"].to_numpy() / ref - 1.0,
        epc=point,
        epc_lo=lo,
        epc_hi=hi,
    )
    return RouterFit(name, res, runs, gains, [str(w.message).splitlines()[0] for w in caught])


def _nearest(dense: pd.Series, n: float) -> float:
    """The dense loss at the activated size closest to n (in log), NaN when none is within 5%."""
    if dense.empty:
        return float("nan")
    sizes = dense.index.to_numpy(np.float64)
    i = int(np.argmin(np.abs(np.log(sizes / n))))
    return float(dense.iloc[i]) if abs(np.log(sizes[i] / n)) < 0.05 else float("nan")


def compare_routers(df: pd.DataFrame, *, n_boot: int = 200, seed: int = 0) -> list[RouterFit]:
    """One ``RouterFit`` per router family in a runs table with finite losses (see the module docstring).

    Raises MoelabError when there are no dense runs or fewer than two router families with MoE runs."""
    fams = router_families(df)
    if len(fams) < 2:
        raise MoelabError(
            "comparing routers needs dense runs and MoE runs of at least two router recipes "
            f"(found: {', '.join(fams) or 'none'})"
        )
    return [fit_family(name, runs, n_boot=n_boot, seed=seed) for name, runs in fams.items()]
