"""Padding the points to a bucketed count (one compiled L-BFGS loop per law for every data size) must not
change a fit: the padded fit, its bootstrap and the objective equal the unpadded ones."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.bootstrap import refit_weighted, resample_weights
from analysis.fitting import fit_arrays, objective, objective_np, pad_points, padded_size, prepare
from analysis.laws import get_law
from tests._analysis_helpers import chinchilla_runs


def test_padded_size_buckets():
    assert [padded_size(n) for n in (1, 10, 16, 17, 21, 32, 33, 240)] == [16, 16, 16, 32, 32, 32, 64, 256]


def test_padding_leaves_objective_and_gradient_unchanged():
    import jax

    law = get_law("chinchilla")
    rng = np.random.default_rng(3)
    df = chinchilla_runs(noise=0.02, seed=5).sample(11, random_state=1)
    data = prepare(df, law)
    w = rng.integers(0, 3, size=len(data)).astype(float)
    X, logy, wp = pad_points(data.X, data.logy, w)
    assert X.shape[0] == logy.shape[0] == wp.shape[0] == 16 and np.all(wp[11:] == 0)
    theta = np.asarray(law.starts())[rng.choice(len(law.starts()), 5)]
    for t in theta:
        ref = objective_np(law, t, data.X, data.logy, w)
        assert objective_np(law, t, X, logy, wp) == pytest.approx(ref, rel=1e-13)
        with jax.enable_x64(True):
            f = objective(law, 1e-3)
            g0 = np.asarray(jax.grad(f)(t, data.X, data.logy, w))
            g1 = np.asarray(jax.grad(f)(t, X, logy, wp))
        np.testing.assert_allclose(g1, g0, rtol=1e-12, atol=1e-14)


def test_padded_fit_and_bootstrap_equal_unpadded():
    n = 11  # padded to 16 rows: 5 of weight 0
    law = get_law("chinchilla")
    df = chinchilla_runs(noise=0.01, seed=n).sample(n, random_state=n)
    data = prepare(df, law)
    a = fit_arrays(law, data, max_starts=64, pad=True)
    b = fit_arrays(law, data, max_starts=64, pad=False)
    assert a.objective == pytest.approx(b.objective, rel=1e-9, abs=1e-15)
    for k in law.params:
        assert a.params[k] == pytest.approx(b.params[k], rel=1e-5), k
    w = resample_weights(n, 12, seed=2)
    ta, tb = refit_weighted(a, w, pad=True), refit_weighted(a, w, pad=False)
    np.testing.assert_allclose(law.to_params(ta), law.to_params(tb), rtol=1e-5)
