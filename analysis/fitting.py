"""Fitting a law: summed Huber loss on log-loss residuals, L-BFGS from every start of the law's grid.

This is the core every other analysis module builds on; ``analysis.fit.fit`` is the entry point from a runs
table (it adds the domain, bootstrap and IsoFLOP paths). The result types live here too: ``FitResult`` carries
an optional ``Bootstrap`` (filled by :mod:`analysis.bootstrap`) and ``Holdout`` (filled by
:mod:`analysis.validate`), so the result is typed without importing the modules that fill it in.

The objective is Hoffmann et al. (2022, Approach 3):

    min_theta  sum_i w_i Huber_delta( log L_theta(x_i) - log L_i ),   delta = 1e-3,

with log L_theta a log-sum-exp of the law's terms. Besiroglu et al. (2024) showed that the *sum* (not the
mean) matters: averaging shrinks the objective until L-BFGS stops early. All starts run at once in
:func:`analysis.lbfgs.minimize_batch`; the lowest final objective wins. Weights ``w`` are bootstrap counts
(:mod:`analysis.bootstrap`) or ones.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import cache

import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis.domain import Domain, check_variation
from analysis.laws import Law, get_law
from analysis.lbfgs import minimize_batch
from moelab.errors import MoelabError

DELTA = 1e-3


def huber(r, delta, xp=np):
    """Huber's loss: r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond (scipy.special.huber)."""
    a = xp.abs(r)
    return xp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@cache
def objective(law: Law, delta: float):
    """The JAX objective f(theta, X, logy, w) of ``law`` (cached so compiled loops are reused)."""
    def f(theta, X, logy, w):
        r = law.log_predict(theta, X, jnp) - logy
        return jnp.sum(w * huber(r, delta, jnp))

    f.__qualname__ = f"objective[{law.name},{delta}]"
    return f


def objective_np(law: Law, theta, X, logy, w=None, delta: float = DELTA) -> np.ndarray:
    """NumPy reference of :func:`objective` for theta [..., P] (used by tests and diagnostics)."""
    r = law.log_predict(np.asarray(theta, np.float64), X, np) - logy
    w = np.ones_like(logy) if w is None else w
    return np.sum(w * huber(r, delta), axis=-1)


PAD_MIN = 16  # smallest padded number of points


def padded_size(n: int) -> int:
    """The bucket ``n`` points are padded to: the next power of two, at least :data:`PAD_MIN`."""
    return max(PAD_MIN, 1 << max(int(n) - 1, 0).bit_length())


def pad_points(X: np.ndarray, logy: np.ndarray, w: np.ndarray, size: int | None = None):
    """(X, logy, w) padded along the points axis to ``size`` (default :func:`padded_size`).

    The compiled L-BFGS loop is specialised to its arguments' shapes, so without padding every new number of
    points (a full fit, a held-out fit with fewer runs, the next sweep) compiles again (~10 s per law on a
    2-core CPU). Padding rows repeat the first point (finite features, so ``0 * huber(r)`` is an exact 0) and
    get weight 0 (``w``'s last axis), which leaves the objective and its gradient unchanged.
    """
    n = X.shape[0]
    m = padded_size(n) if size is None else int(size)
    if m <= n:
        return X, logy, w
    X = np.concatenate([X, np.repeat(X[:1], m - n, axis=0)])
    logy = np.concatenate([logy, np.repeat(logy[:1], m - n)])
    w = np.concatenate([w, np.zeros((*w.shape[:-1], m - n))], axis=-1)
    return X, logy, w


class FitWarning(UserWarning):
    """A fit that deserves a second look (dropped points, best start on the grid's edge, ...)."""


@dataclass
class FitData:
    """Features, observed losses and identities of the points a law is fitted to."""

    X: np.ndarray  # [n, k]
    loss: np.ndarray  # [n]
    index: np.ndarray  # row labels of the DataFrame the points came from
    n_dropped: int = 0

    @property
    def logy(self) -> np.ndarray:
        return np.log(self.loss)

    def __len__(self) -> int:
        return len(self.loss)


def prepare(df, law: Law, loss_col: str = "loss") -> FitData:
    """Validate ``df`` for ``law`` and build its features; NaN losses are dropped with a warning.

    Errors (MoelabError, one line): a missing column, non-positive or non-finite features, a column the law
    needs to vary with fewer than two distinct levels (:func:`analysis.domain.check_variation`: nominal sweep
    values where the table has them, so G = 1.01..1.10 from rounding is one level), fewer points than
    parameters + 1.
    """
    missing = [c for c in (*law.columns, loss_col) if c not in df.columns]
    if missing:
        raise MoelabError(
            f"law {law.name} needs column(s) {', '.join(missing)}; "
            f"the table has {', '.join(map(str, df.columns))}"
        )
    loss = np.asarray(df[loss_col], dtype=np.float64)
    keep = np.isfinite(loss)
    n_nan = int((~keep).sum())
    if n_nan:
        warnings.warn(f"dropped {n_nan} run(s) with a NaN/inf {loss_col}", FitWarning, stacklevel=3)
    df = df[keep]
    loss = loss[keep]
    if np.any(loss <= 0):
        raise MoelabError(f"column {loss_col} has non-positive values; losses must be > 0 (nats/token)")
    for c in law.columns:
        v = np.asarray(df[c], dtype=np.float64)
        if c == "shared_ratio":
            continue  # NaN allowed for dense runs
        if not np.all(np.isfinite(v)):
            raise MoelabError(f"column {c} has NaN/inf values in runs with a finite {loss_col}")
        if c in ("active_params", "tokens", "granularity", "n_experts") and np.any(v <= 0):
            raise MoelabError(f"column {c} must be > 0 for law {law.name}")
    check_variation(df, law)  # distinct nominal levels, not rounding noise
    if len(loss) < law.n_params + 1:
        raise MoelabError(
            f"law {law.name} has {law.n_params} parameters and needs at least {law.n_params + 1} runs; "
            f"got {len(loss)}"
        )
    return FitData(X=law.features(df), loss=loss, index=np.asarray(df.index), n_dropped=n_nan)


@dataclass
class Bootstrap:
    """Bootstrap samples of a law's reported parameters and their summaries."""

    names: tuple[str, ...]
    samples: np.ndarray  # [B, P] reported parameters per resample
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return int(self.samples.shape[0])

    @property
    def stderr(self) -> dict[str, float]:
        return {k: float(v) for k, v in zip(self.names, np.std(self.samples, axis=0, ddof=1), strict=True)}

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        q = 100 * (1 - self.confidence) / 2
        lo, hi = np.percentile(self.samples, [q, 100 - q], axis=0)
        return {k: (float(a), float(b)) for k, a, b in zip(self.names, lo, hi, strict=True)}

    def interval(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of any per-sample quantity ``values`` [B, ...] at this confidence."""
        q = 100 * (1 - self.confidence) / 2
        lo, hi = np.percentile(values, [q, 100 - q], axis=0)
        return lo, hi


@dataclass
class Holdout:
    """Predicted vs observed loss of each held-out run, summary errors and the mean error's interval."""

    law: str
    table: pd.DataFrame  # run_id, stratum, compute, observed, predicted, rel_error
    n_train: int
    interval: tuple[float, float] | None = None  # of mean_abs_rel_error, at ``confidence``
    confidence: float = 0.95
    interval_basis: str = ""

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean((self.table["predicted"] - self.table["observed"]) ** 2)))

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.table["rel_error"])))

    @property
    def median_abs_rel_error(self) -> float:
        return float(np.median(np.abs(self.table["rel_error"])))

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.max(np.abs(self.table["rel_error"])))

    def to_dict(self) -> dict:
        return {
            "law": self.law,
            "n_train": self.n_train,
            "n_held_out": len(self.table),
            "rmse": self.rmse,
            "mean_abs_rel_error": self.mean_abs_rel_error,
            "mean_abs_rel_error_interval": None if self.interval is None else list(self.interval),
            "confidence": self.confidence,
            "interval_basis": self.interval_basis,
            "median_abs_rel_error": self.median_abs_rel_error,
            "max_abs_rel_error": self.max_abs_rel_error,
            "runs": self.table.to_dict(orient="records"),
        }


@dataclass
class FitResult:
    """A fitted law. ``params`` are the reported parameters; ``theta`` the raw optimisation coordinates."""

    law: Law
    params: dict[str, float]
    theta: np.ndarray
    objective: float
    data: FitData
    delta: float = DELTA
    n_starts: int = 0
    n_converged: int = 0
    warnings: list[str] = field(default_factory=list)
    bootstrap: Bootstrap | None = None  # set by analysis.bootstrap
    holdout: Holdout | None = None  # set by analysis.validate.holdout
    top_thetas: np.ndarray | None = None  # best distinct end points (bootstrap restarts)
    domain: Domain | None = None  # the runs of the table the law was fitted on (analysis.domain)

    @property
    def on_bound(self) -> list[str]:
        """Reported parameters whose optimisation coordinate sits on the law's box (within 1e-6 of its width):
        the optimum is the bound, not an interior minimum, and the value is not an estimate."""
        lo, hi = np.array(self.law.bounds).T
        tol = 1e-6 * (hi - lo)
        hit = (self.theta <= lo + tol) | (self.theta >= hi - tol)
        return [_reported_name(self.law, r) for r, h in zip(self.law.raw, hit, strict=True) if h]

    @property
    def n_points(self) -> int:
        return len(self.data)

    @property
    def stderr(self) -> dict[str, float] | None:
        return None if self.bootstrap is None else self.bootstrap.stderr

    @property
    def intervals(self) -> dict[str, tuple[float, float]] | None:
        return None if self.bootstrap is None else self.bootstrap.intervals

    def predict(self, data) -> np.ndarray:
        """Predicted loss for a runs DataFrame or a feature matrix."""
        return self.law.predict(self.params, data)

    def to_dict(self) -> dict:
        """JSON-ready summary: law, params, stderr, intervals, n_points (+ holdout when computed)."""
        out = {
            "law": self.law.name,
            "params": {k: float(v) for k, v in self.params.items()},
            "stderr": self.stderr,
            "intervals": None if self.intervals is None else {k: list(v) for k, v in self.intervals.items()},
            "n_points": self.n_points,
            "n_dropped": self.data.n_dropped,
            "objective": self.objective,
            "n_starts": self.n_starts,
            "n_converged": self.n_converged,
            "warnings": list(self.warnings),
            "on_bound": self.on_bound,
        }
        if self.domain is not None:
            out["domain"] = self.domain.to_dict()
        if self.bootstrap is not None:
            out["n_bootstrap"] = self.bootstrap.n
            out["confidence"] = self.bootstrap.confidence
        if self.holdout is not None:
            out["holdout"] = self.holdout.to_dict()
        return out


def _reported_name(law: Law, raw: str) -> str:
    """The reported parameter a raw coordinate encodes (``log_a`` -> ``a``; Chinchilla's ``e`` -> ``E``)."""
    name = raw.removeprefix("log_")
    for p in law.params:
        if p == name:
            return p
    return next((p for p in law.params if p.lower() == name.lower()), raw)


def _distinct_best(x: np.ndarray, f: np.ndarray, k: int) -> np.ndarray:
    """Indices of up to k end points with the lowest objective, deduplicated (rounded to 1e-4)."""
    order = np.argsort(f)
    out, seen = [], set()
    for i in order:
        if not np.isfinite(f[i]):
            break
        key = tuple(np.round(x[i], 4))
        if key in seen:
            continue
        seen.add(key)
        out.append(i)
        if len(out) == k:
            break
    return np.array(out, dtype=np.int64)


def edge_warning(law: Law, starts: np.ndarray, best_start: np.ndarray, best: np.ndarray) -> str | None:
    """A message when the best start lies on the grid's edge and the optimum is at or beyond that edge.

    The grid brackets the optimum when, in every coordinate, the fitted value lies strictly inside the grid's
    range; a best start on the boundary with the optimum outside means a wider grid could find a better fit.
    """
    lo, hi = starts.min(axis=0), starts.max(axis=0)
    bad = []
    for j, name in enumerate(law.raw):
        if lo[j] == hi[j]:
            continue
        on_edge = best_start[j] in (lo[j], hi[j])
        outside = best[j] <= lo[j] or best[j] >= hi[j]
        if on_edge and outside:
            bad.append(f"{name}={best[j]:.4g} (grid {lo[j]:g}..{hi[j]:g})")
    if not bad:
        return None
    return f"{law.name}: best start on the grid's edge with the optimum outside it: " + ", ".join(bad)


def fit_arrays(
    law: Law | str,
    data: FitData,
    *,
    delta: float = DELTA,
    starts: np.ndarray | None = None,
    max_starts: int | None = None,
    polish: int = 16,
    pad: bool = True,
) -> FitResult:
    """Fit ``law`` to prepared data from every start of its grid; see :func:`analysis.fit.fit`.

    Two passes: every start runs L-BFGS in float32 (up to 500 evaluations, relative decrease 1e-6), then the
    ``polish`` best distinct end points are refined in float64 to a relative decrease of 1e-14. The float32
    pass only has to find the basins; the reported optimum is a float64 L-BFGS solution. With ``pad`` the
    points are padded to a bucketed count with zero weights (:func:`pad_points`), so one compiled loop serves
    every data size; the optimum is the same up to the order of floating-point summation.
    """
    law = get_law(law)
    x0 = law.starts(max_starts) if starts is None else np.atleast_2d(np.asarray(starts, np.float64))
    lo, hi = np.array(law.bounds).T
    fun = objective(law, float(delta))
    args = (data.X, data.logy, np.ones(len(data)))
    if pad:
        args = pad_points(*args)
    coarse = minimize_batch(fun, x0, args, lower=lo, upper=hi, maxiter=500, ftol=1e-6, gtol=1e-7, x64=False)
    top = _distinct_best(coarse.x, coarse.f, polish)
    if top.size == 0:
        raise MoelabError(f"law {law.name}: no start reached a finite objective; check the data")
    fine = minimize_batch(fun, coarse.x[top], args, lower=lo, upper=hi, maxiter=5000, ftol=1e-14, gtol=1e-12)
    j = int(np.argmin(fine.f))
    if not math.isfinite(float(fine.f[j])):
        raise MoelabError(f"law {law.name}: no start reached a finite objective; check the data")
    theta = fine.x[j]
    params = dict(zip(law.params, (float(v) for v in law.to_params(theta)), strict=True))
    order = np.argsort(fine.f)
    res = FitResult(
        law=law,
        params=params,
        theta=theta,
        objective=float(fine.f[j]),
        data=data,
        delta=delta,
        n_starts=len(x0),
        n_converged=int(coarse.converged.sum()),
        top_thetas=fine.x[order[:4]],
    )
    best_start = np.clip(x0[top[j]], lo, hi)
    msg = edge_warning(law, x0, best_start, theta) if len(x0) > 1 else None
    if msg:
        res.warnings.append(msg)
        warnings.warn(msg, FitWarning, stacklevel=2)
    return res
