"""The fast paths of analysis against slow obvious references: L-BFGS vs SciPy, JAX gradients vs finite
differences of the NumPy objective, the frontier vs Chinchilla's closed form, isoflop on exact profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _analysis_helpers import CHIN_TRUE, chinchilla_runs, moe_runs, with_loss
from scipy.optimize import minimize

import analysis
from analysis.fitting import huber, objective, objective_np
from analysis.frontier import chinchilla_closed_form, frontier, optimal_allocation
from analysis.lbfgs import minimize_batch


def _rosen(x):
    import jax.numpy as jnp

    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _quad(x, A, b):
    return 0.5 * x @ A @ x - b @ x


def test_lbfgs_matches_scipy_on_random_problems():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-2, 2, size=(16, 2))  # 2-D Rosenbrock: one minimum, at (1, 1)
    sol = minimize_batch(_rosen, x0, maxiter=3000, ftol=1e-15, gtol=1e-9)
    np.testing.assert_allclose(sol.x, 1.0, atol=1e-4)
    # per-lane data: random SPD quadratics, some with active bounds; SciPy L-BFGS-B as the reference
    M, P = 12, 5
    Q = rng.normal(size=(M, P, P))
    A = Q @ Q.transpose(0, 2, 1) + 0.5 * np.eye(P)
    b = rng.normal(size=(M, P)) * 3
    lo, hi = -np.ones(P), np.ones(P)
    sol = minimize_batch(_quad, np.zeros((M, P)), (A, b), (True, True), lo, hi, ftol=1e-15, gtol=1e-10)
    for m in range(M):
        ref = minimize(
            lambda x, m=m: _quad(x, A[m], b[m]), np.zeros(P), jac=lambda x, m=m: A[m] @ x - b[m],
            method="L-BFGS-B", bounds=list(zip(lo, hi, strict=True)), options={"ftol": 1e-15, "gtol": 1e-12},
        )  # fmt: skip
        assert sol.f[m] == pytest.approx(ref.fun, abs=1e-7)
        np.testing.assert_allclose(sol.x[m], ref.x, atol=1e-4)


@pytest.mark.parametrize("name", ["chinchilla", "granularity", "clark", "joint_moe", "shared_ratio"])
def test_objective_and_gradient_match_numpy_reference(name):
    import jax

    law = analysis.get_law(name)
    df = moe_runs() if name != "chinchilla" else chinchilla_runs()
    df = with_loss(df, name, _default_params(name), 0.02, seed=1)
    X, logy = law.features(df), np.log(df["loss"].to_numpy())
    rng = np.random.default_rng(2)
    w = rng.integers(0, 3, size=len(df)).astype(float)
    theta = law.from_params(np.array([_default_params(name)[p] for p in law.params])) + 0.01 * rng.normal(
        size=law.n_params
    )
    f = objective(law, 1e-3)
    with jax.enable_x64(True):
        val, grad = jax.value_and_grad(f)(theta, X, logy, w)
    assert float(val) == pytest.approx(objective_np(law, theta, X, logy, w), rel=1e-12)
    h = 1e-6
    def ref(t):
        return objective_np(law, t, X, logy, w)

    fd = [(ref(theta + h * e) - ref(theta - h * e)) / (2 * h) for e in np.eye(law.n_params)]
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4, atol=1e-9)


def _default_params(name):
    from _analysis_helpers import CLARK_TRUE, GRAN_TRUE, JOINT_TRUE, SHARED_TRUE

    return {"chinchilla": CHIN_TRUE, "granularity": GRAN_TRUE, "clark": CLARK_TRUE, "joint_moe": JOINT_TRUE,
            "shared_ratio": SHARED_TRUE}[name]  # fmt: skip


def test_huber_is_quadratic_then_linear():
    r = np.array([-1.0, -1e-3, 0.0, 5e-4, 2.0])
    np.testing.assert_allclose(huber(r, 1e-3), [1e-3 * (1 - 5e-4), 5e-7, 0.0, 1.25e-7, 1e-3 * (2 - 5e-4)])


def test_law_round_trips_and_grid():
    for law in analysis.LAWS.values():
        p = np.array([_default_params(law.name)[k] for k in law.params])
        np.testing.assert_allclose(law.to_params(law.from_params(p)), p, rtol=1e-12)
        s = law.starts()
        assert s.shape[1] == law.n_params and len(s) <= law.max_starts
    chin = analysis.get_law("chinchilla").starts()
    assert chin.shape == (4500, 5)  # Hoffmann et al.'s grid


def test_frontier_matches_chinchilla_closed_form():
    law = analysis.get_law("chinchilla")
    C = np.logspace(18, 26, 9)
    p = np.array([[CHIN_TRUE[k] for k in law.params]])
    fr = optimal_allocation(law, p, C)
    N, D = chinchilla_closed_form(CHIN_TRUE, C)
    np.testing.assert_allclose(fr["N_opt"][0], N, rtol=2e-3)
    np.testing.assert_allclose(fr["D_opt"][0], D, rtol=2e-3)
    L = law.predict(CHIN_TRUE, np.log(np.stack([N, D], -1)))
    np.testing.assert_allclose(fr["L_opt"][0], L, rtol=1e-6)


def test_frontier_intervals_bracket_point_estimate():
    res = analysis.fit(chinchilla_runs(noise=0.01, seed=1), "chinchilla", bootstrap=64, seed=7)
    fr = frontier(res, [1e20, 1e23])
    for k in ("N_opt", "D_opt", "L_opt"):
        assert np.all(fr[f"{k}_lo"] <= fr[k] * 1.001) and np.all(fr[k] <= fr[f"{k}_hi"] * 1.001)
    ex = analysis.extrapolate(res, "hunyuan-large")
    assert ex["loss_interval"][0] <= ex["loss"] <= ex["loss_interval"][1]
    assert "tokenizer" in ex["warning"]


def test_isoflop_recovers_chinchilla_exponents_on_exact_profiles():
    law = analysis.get_law("chinchilla")
    rows = []
    for C in np.logspace(18, 21, 4):
        n_opt = chinchilla_closed_form(CHIN_TRUE, C)[0]
        for n in n_opt * np.logspace(-0.4, 0.4, 9):
            rows.append((n, C / (6 * n), C))
    a = np.array(rows)
    df = pd.DataFrame({"active_params": a[:, 0], "tokens": a[:, 1], "flops": a[:, 2]})
    df["loss"] = law.predict(CHIN_TRUE, df)
    res = analysis.fit(df, "isoflop", bootstrap=20)
    a_true = CHIN_TRUE["beta"] / (CHIN_TRUE["alpha"] + CHIN_TRUE["beta"])
    assert res.params["a"] == pytest.approx(a_true, abs=0.01)
    assert res.params["a"] + res.params["b"] == pytest.approx(1.0, abs=1e-9)  # D* = C / (6 N*)
    assert res.to_dict()["n_budgets"] == 4


def test_holdout_reports_each_held_out_run():
    df = chinchilla_runs(noise=0.005, seed=2)
    res = analysis.holdout(df, "chinchilla", fraction=0.25)
    h = res.holdout
    assert len(h.table) == 12 and h.n_train == 36
    top = np.sort(df["flops"].to_numpy())[-12:]
    np.testing.assert_allclose(np.sort(h.table["compute"]), top)
    assert h.rmse < 0.05 and h.mean_abs_rel_error < 0.02
    thr = analysis.holdout(df, "chinchilla", fraction=None, threshold=top[0]).holdout
    assert len(thr.table) == 12


def test_edge_warning_fires_only_when_grid_misses_optimum():
    law = analysis.get_law("chinchilla")
    starts = law.starts()
    inside = law.from_params(np.array([CHIN_TRUE[k] for k in law.params]))
    assert analysis.fitting.edge_warning(law, starts, starts[0], inside) is None
    outside = inside.copy()
    outside[0] = 30.0  # a beyond the grid's 25, start on the edge
    edge_start = starts[np.argmax(starts[:, 0])]
    assert "edge" in analysis.fitting.edge_warning(law, starts, edge_start, outside)
