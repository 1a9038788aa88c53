"""Bootstrap over runs: refit a law to resamples of the runs for standard errors and percentile intervals.

Each resample draws n runs with replacement (Efron & Tibshirani 1993, ch. 6); it is represented by the count
of each run, which becomes the weight of that run in the summed Huber objective, so all resamples share one
feature matrix and run as lanes of one batched L-BFGS (:mod:`analysis.lbfgs`). Each resample starts from the
full-data optimum and the next-best distinct end points of the full fit (as Besiroglu et al. 2024 refit from
the full-data solution); the lowest objective per resample wins.
"""

from __future__ import annotations

import numpy as np

from analysis.fitting import Bootstrap, FitResult, objective, pad_points, padded_size
from analysis.lbfgs import minimize_batch


def resample_weights(n_points: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """[B, n] counts of each run in B resamples with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=n_boot).astype(np.float64)


def refit_weighted(res: FitResult, weights: np.ndarray, n_starts: int = 2, pad: bool = True) -> np.ndarray:
    """Raw optima [B, P] of ``res.law`` refitted with per-resample weights [B, n] (float64 L-BFGS); the
    points are padded with zero weights to a bucketed count (:func:`analysis.fitting.pad_points`) unless
    ``pad=False``."""
    law, data = res.law, res.data
    starts = res.top_thetas[:n_starts] if res.top_thetas is not None else res.theta[None]
    B, K = weights.shape[0], len(starts)
    x0 = np.tile(starts, (B, 1))  # lane b*K + k
    w = np.repeat(weights, K, axis=0)
    lo, hi = np.array(law.bounds).T
    args = pad_points(data.X, data.logy, w) if pad else (data.X, data.logy, w)
    sol = minimize_batch(
        objective(law, float(res.delta)),
        x0,
        args,
        batched=(False, False, True),
        lower=lo,
        upper=hi,
        maxiter=2000,
        ftol=1e-12,
        gtol=1e-10,
    )
    f = sol.f.reshape(B, K)
    best = np.argmin(f, axis=1)
    return sol.x.reshape(B, K, -1)[np.arange(B), best]


def refit_many(
    law, delta: float, datasets: list, weights: list[np.ndarray], starts: list[np.ndarray]
) -> list[np.ndarray]:
    """Raw optima of ``law`` for many datasets at once: dataset i = (X [n_i, k], logy [n_i]) refitted with
    each row of ``weights[i]`` [B_i, n_i] from each start of ``starts[i]`` [K_i, P] (best start kept), as
    lanes of one float64 L-BFGS with per-lane data (points padded with zero weights to a common bucketed
    count). Returns one [B_i, P] array per dataset (:mod:`analysis.suggest` simulates designs with it)."""
    m = padded_size(max(len(y) for _, y in datasets))
    Xs, ys, ws, x0, lanes = [], [], [], [], []
    for (X, y), w, s in zip(datasets, weights, starts, strict=True):
        s = np.atleast_2d(s)
        B, K = w.shape[0], len(s)
        Xp, yp, wp = pad_points(np.asarray(X, np.float64), np.asarray(y, np.float64), w, m)
        Xs.append(np.broadcast_to(Xp, (B * K, *Xp.shape)))
        ys.append(np.broadcast_to(yp, (B * K, m)))
        ws.append(np.repeat(wp, K, axis=0))
        x0.append(np.tile(s, (B, 1)))
        lanes.append((B, K))
    lo, hi = np.array(law.bounds).T
    sol = minimize_batch(
        objective(law, float(delta)),
        np.concatenate(x0),
        (np.concatenate(Xs), np.concatenate(ys), np.concatenate(ws)),
        batched=(True, True, True),
        lower=lo,
        upper=hi,
        maxiter=2000,
        ftol=1e-12,
        gtol=1e-10,
    )
    out, i = [], 0
    for B, K in lanes:
        f = sol.f[i : i + B * K].reshape(B, K)
        x = sol.x[i : i + B * K].reshape(B, K, -1)
        out.append(x[np.arange(B), np.argmin(f, axis=1)])
        i += B * K
    return out


def bootstrap(res: FitResult, n_boot: int = 1000, *, confidence: float = 0.95, seed: int = 0) -> Bootstrap:
    """Refit ``res.law`` to ``n_boot`` resamples of its runs; attach with ``res.bootstrap = ...``."""
    w = resample_weights(len(res.data), int(n_boot), seed)
    theta = refit_weighted(res, w)
    return Bootstrap(names=res.law.params, samples=res.law.to_params(theta), confidence=confidence)
