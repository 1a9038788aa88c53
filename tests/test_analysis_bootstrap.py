"""Bootstrap: 95% percentile intervals cover the truth in >= 90 of 100 seeded trials (chinchilla)."""

from __future__ import annotations

import numpy as np
import pytest
from _analysis_helpers import CHIN_TRUE, chinchilla_runs

import analysis
from analysis.bootstrap import resample_weights
from analysis.fitting import objective
from analysis.laws import CHINCHILLA
from analysis.lbfgs import minimize_batch

TRIALS, N_BOOT, NOISE = 100, 200, 0.01


@pytest.mark.slow
def test_bootstrap_intervals_cover_truth_in_90_of_100_trials():
    law = CHINCHILLA
    base = chinchilla_runs(noise=0.0)
    X = law.features(base)
    n = len(base)
    truth = np.array([CHIN_TRUE[p] for p in law.params])
    rng = np.random.default_rng(2024)
    logy = np.log(base["loss"].to_numpy())[None, :] + NOISE * rng.normal(size=(TRIALS, n))
    f = objective(law, 1e-3)
    lo, hi = np.array(law.bounds).T
    # 1. fit every trial (from the truth and from a distant start; the lower objective wins)
    t0 = law.from_params(truth)
    starts = np.stack([t0, t0 + np.array([2.0, -2.0, 0.3, 0.1, -0.1])])
    x0 = np.tile(starts, (TRIALS, 1))
    args = (X, np.repeat(logy, 2, 0), np.ones((2 * TRIALS, n)))
    sol = minimize_batch(f, x0, args, (False, True, True), lo, hi)
    best = np.argmin(sol.f.reshape(TRIALS, 2), axis=1)
    fitted = sol.x.reshape(TRIALS, 2, -1)[np.arange(TRIALS), best]
    # 2. bootstrap every trial from its own optimum: TRIALS * N_BOOT lanes in one batch
    w = np.concatenate([resample_weights(n, N_BOOT, seed=s) for s in range(TRIALS)])
    boot = minimize_batch(
        f, np.repeat(fitted, N_BOOT, 0), (X, np.repeat(logy, N_BOOT, 0), w), (False, True, True), lo, hi,
        ftol=1e-12, gtol=1e-10,
    )  # fmt: skip
    samples = law.to_params(boot.x).reshape(TRIALS, N_BOOT, -1)
    lo_q, hi_q = np.percentile(samples, [2.5, 97.5], axis=1)
    covered = (lo_q <= truth) & (truth <= hi_q)
    counts = dict(zip(law.params, covered.sum(0).tolist(), strict=True))
    assert all(c >= 90 for c in counts.values()), counts
    # and calibrated: interval widths match the spread of the estimates over the trials (the sampling
    # distribution the bootstrap imitates), not the whole bounds box
    sd = np.std(np.log(np.abs(law.to_params(fitted))), axis=0)
    width = np.median(np.log(np.abs(hi_q)) - np.log(np.abs(lo_q)), axis=0)
    ratio = width / (2 * 1.96 * sd)
    assert np.all((ratio > 0.6) & (ratio < 1.8)), dict(zip(law.params, ratio.round(2).tolist(), strict=True))


def test_bootstrap_api_summaries():
    res = analysis.fit(chinchilla_runs(noise=0.01, seed=1), "chinchilla", bootstrap=64, seed=7)
    b = res.bootstrap
    assert b.n == 64 and b.samples.shape == (64, 5)
    for k in res.law.params:
        lo, hi = res.intervals[k]
        assert lo <= hi and res.stderr[k] > 0
        assert lo <= res.params[k] * 1.05 and hi >= res.params[k] * 0.95
    # same seed -> same resamples -> same intervals
    again = analysis.bootstrap(res, 64, seed=7)
    np.testing.assert_allclose(again.samples, b.samples, rtol=1e-6)
    d = res.to_dict()
    assert set(d) >= {"law", "params", "stderr", "intervals", "n_points"} and d["n_bootstrap"] == 64


def test_resample_weights_are_counts():
    w = resample_weights(10, 500, seed=0)
    assert w.shape == (500, 10) and np.all(w.sum(1) == 10) and np.all(w >= 0)
    assert abs(w.mean() - 1) < 0.05
