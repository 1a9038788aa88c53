"""Acceptance: the Chinchilla Approach 3 fit on Besiroglu et al.'s extracted data (the bundled dataset
epoch-chinchilla), with their selection and loss, against their published coefficients."""

from __future__ import annotations

import numpy as np
import pytest

import analysis
from analysis import datasets
from analysis.published import PUBLISHED

# Besiroglu et al. 2024 (arXiv 2404.10102): the 4,500-start grid fit on 240 points, and their bootstrap's
# 95% intervals (4,000 resamples) of the BFGS fit.
EPOCH = PUBLISHED["epoch2024-grid"].params
EPOCH_95 = {k: PUBLISHED["epoch2024"].intervals[k] for k in ("E", "alpha", "beta")}


@pytest.fixture(scope="module")
def epoch_runs():
    df = datasets.load("epoch-chinchilla")  # 245 points, the 5 highest losses dropped, D = C/(6N)
    assert len(df) == 240
    return df


@pytest.fixture(scope="module")
def epoch_fit(epoch_runs):
    return analysis.fit(epoch_runs, "chinchilla", bootstrap=200, seed=0)


def test_real_data_matches_besiroglu_within_1_percent(epoch_fit):
    assert epoch_fit.n_points == 240 and epoch_fit.n_starts == 4500
    for k, v in EPOCH.items():
        assert epoch_fit.params[k] == pytest.approx(v, rel=0.01), k
    assert not epoch_fit.warnings


def test_real_data_bootstrap_intervals_near_besiroglu(epoch_fit):
    iv = epoch_fit.intervals
    for k, (lo, hi) in EPOCH_95.items():
        assert iv[k][0] < epoch_fit.params[k] < iv[k][1]
        # 200 resamples against their 4,000: ends agree to a few percent of the value
        assert iv[k][0] == pytest.approx(lo, rel=0.03) and iv[k][1] == pytest.approx(hi, rel=0.03), k
    se = epoch_fit.stderr
    assert 0.01 < se["alpha"] < 0.03 and se["A"] > 50


def test_fit_is_a_minimum_of_the_reference_objective(epoch_fit):
    """No coordinate perturbation of the fitted raw parameters lowers the NumPy reference objective."""
    from analysis.fitting import objective_np

    law, data = epoch_fit.law, epoch_fit.data
    f0 = objective_np(law, epoch_fit.theta, data.X, data.logy)
    assert f0 == pytest.approx(epoch_fit.objective, rel=1e-10)
    eye = np.eye(law.n_params)
    for h in (1e-3, 1e-5):
        for s in (1, -1):
            f = objective_np(law, epoch_fit.theta + s * h * eye, data.X, data.logy)
            assert np.all(f >= f0 - 1e-12)
