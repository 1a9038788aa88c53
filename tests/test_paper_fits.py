"""The MoE paper's own fit reproduced on its released data (the bundled dataset clark-routing), checked
against an independent SciPy reimplementation and against the published coefficients; the laws' formulas
checked on published data (a wrong log base or interaction sign fails here, not only on synthetic data).

The Chinchilla counterpart (Besiroglu et al.'s protocol on the bundled epoch-chinchilla) is
tests/test_fit_chinchilla.py.

Clark et al. 2022's protocol, as the authors' released notebook (example.ipynb of
google-deepmind/scaling_laws_for_routing) runs it: the final step of every run; routing frequency 1/2, k = 1,
seed 42; the S-BASE runs with the dense runs as E = 1; mean squared error of log10 L; the best of many
L-BFGS-B restarts. The paper's text (its appendix on fitting) could not be retrieved from this machine, so the
notebook and ../shared/LAWS.md stand for it.

Agreement with the published S-BASE coefficients (a -0.082, b -0.108, c 0.009, d 1.104, E_start 1.847,
E_max 314.5). On the released 58 runs the least-squares optimum is a -0.0830, b -0.1180, c 0.00992, d 1.1136,
E_start 2.07, E_max 238.7 (SciPy agrees to 1e-6): a and d within 1.3%, c within 11%, b within 10%, E_start
and E_max within 13% and 25%. The tolerance is the data's own: every published coefficient lies inside the
fit's 95% bootstrap interval (resampling runs), E_start and E_max are weakly determined (intervals about
[1.3, 3.4] and [105, 910]), and the two coefficient sets predict the 58 losses within 1% of each other. The
published set's mean squared error of log10 L is 1.31x the optimum's on these runs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import least_squares

import analysis
from analysis import datasets
from analysis.laws import CHINCHILLA, CLARK
from analysis.published import PUBLISHED

CLARK_PUB = PUBLISHED["clark2022"].params


@pytest.fixture(scope="module")
def clark_runs():
    return datasets.load("clark-routing")


@pytest.fixture(scope="module")
def clark_fit(clark_runs):
    d = datasets.get("clark-routing")
    return analysis.fit(clark_runs, d.law, delta=d.delta, bootstrap=200, seed=0)


def _notebook_selection() -> pd.DataFrame:
    """The authors' notebook, in plain pandas: the last step per run, then the query."""
    raw = pd.read_csv(datasets.get("clark-routing").path)
    last = raw.sort_values("step").groupby("hyper_id").last()
    sel = last.query("(routing_frequency == 1/2) and (k == 1) and (seed == 42)")
    return sel[sel["router_type"].isin(["Dense", "S-Base"])]


def _log10_law(p, N, E):
    """Clark et al.'s eq. (1) with the saturating Ê, written from the paper (base-10 logs)."""
    a, b, c, d, e_start, e_max = p
    e_hat = 1.0 / (1.0 / (E - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)) + 1.0 / e_max)
    lN, lE = np.log10(N), np.log10(e_hat)
    return a * lN + b * lE + c * lN * lE + d


def _scipy_fit(sel: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Independent least squares of log10 L: SciPy's Levenberg-Marquardt from 4 starts, E_start and E_max
    in log2 as in the notebook."""
    N = sel["dense_parameter_count"].to_numpy(float)
    E = sel["num_experts"].to_numpy(float)
    y = np.log10(sel["loss_validation"].to_numpy(float))

    def resid(x):
        return _log10_law([*x[:4], 2.0 ** x[4], 2.0 ** x[5]], N, E) - y

    best = None
    for ls, lm in itertools.product((0.5, 1.5), (6.0, 9.0)):
        x0 = [-0.1, -0.1, 0.0, 1.0, ls, lm]
        r = least_squares(resid, x0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
        if best is None or np.mean(r.fun**2) < np.mean(best.fun**2):
            best = r
    x = best.x
    return np.array([*x[:4], 2.0 ** x[4], 2.0 ** x[5]]), float(np.mean(best.fun**2))


def test_clark_selection_is_the_notebooks(clark_runs):
    sel = _notebook_selection()
    assert sorted(clark_runs["run_id"].astype(int)) == sorted(sel.index)
    by_id = clark_runs.set_index(clark_runs["run_id"].astype(int))
    np.testing.assert_array_equal(by_id.loc[sel.index, "loss"], sel["loss_validation"])


def test_clark_fit_matches_an_independent_scipy_least_squares(clark_runs, clark_fit):
    ref, ref_mse = _scipy_fit(_notebook_selection())
    y = np.log10(clark_runs["loss"].to_numpy())
    mse = float(np.mean((np.log10(clark_fit.predict(clark_runs)) - y) ** 2))
    assert mse == pytest.approx(ref_mse, rel=1e-6)
    assert mse <= ref_mse * (1 + 1e-9)  # ours is no worse than SciPy's optimum
    got = np.array([clark_fit.params[k] for k in CLARK.params])
    np.testing.assert_allclose(got, ref, rtol=1e-3)
    assert not clark_fit.warnings


def test_clark_fit_agrees_with_the_published_coefficients(clark_runs, clark_fit):
    """Within the fit's own 95% bootstrap intervals; predictions within 1% (module docstring)."""
    iv = clark_fit.intervals
    for k, v in CLARK_PUB.items():
        assert iv[k][0] <= v <= iv[k][1], (k, v, iv[k])
    tol = {"a": 0.02, "b": 0.12, "c": 0.15, "d": 0.015, "E_start": 0.2, "E_max": 0.3}
    for k, v in CLARK_PUB.items():
        assert clark_fit.params[k] == pytest.approx(v, rel=tol[k]), k
    ours, theirs = clark_fit.predict(clark_runs), CLARK.predict(CLARK_PUB, clark_runs)
    assert np.max(np.abs(ours / theirs - 1)) < 0.01
    y = np.log10(clark_runs["loss"].to_numpy())
    ratio = np.mean((np.log10(theirs) - y) ** 2) / np.mean((np.log10(ours) - y) ** 2)
    assert 1.0 < ratio < 1.5


def test_clark_law_formula_on_published_data(clark_runs):
    """The registered law with the published S-BASE coefficients predicts every released run within 2.5%
    (mean 0.69%); the same coefficients read with natural logs, a flipped interaction sign, total parameters
    for N (mean errors 68%, 34%, 13%) or the raw expert count for Ê (1.3%) miss by more: each of those formula
    errors fails this test."""
    L = clark_runs["loss"].to_numpy()
    N, E = clark_runs["active_params"].to_numpy(float), clark_runs["n_experts"].to_numpy(float)
    pred = CLARK.predict(CLARK_PUB, clark_runs)
    p = [CLARK_PUB[k] for k in CLARK.params]
    np.testing.assert_allclose(pred, 10 ** _log10_law(p, N, E), rtol=1e-12)
    rel = np.abs(pred / L - 1)
    assert rel.mean() < 0.0075 and rel.max() < 0.025

    a, b, c, d, es, em = p
    e_hat = 10 ** (_log10_law([0, 1, 0, 0, es, em], N, E))
    wrong = {
        "natural logs": np.exp(a * np.log(N) + b * np.log(e_hat) + c * np.log(N) * np.log(e_hat) + d),
        "interaction sign": 10 ** _log10_law([a, b, -c, d, es, em], N, E),
        "E instead of Ê": 10 ** (a * np.log10(N) + b * np.log10(E) + c * np.log10(N) * np.log10(E) + d),
        "total parameters": 10 ** _log10_law(p, clark_runs["total_params"].to_numpy(float), E),
    }
    for name, w in wrong.items():
        assert np.mean(np.abs(w / L - 1)) > 0.012, name


def test_chinchilla_law_formula_on_published_data():
    """Besiroglu et al.'s published set predicts their 240 points within 0.6% on average; swapping the N and D
    exponents, or reading D as C/N, misses by more than 2%."""
    runs = datasets.load("epoch-chinchilla")
    L = runs["loss"].to_numpy()
    pub = PUBLISHED["epoch2024"].params
    assert np.mean(np.abs(CHINCHILLA.predict(pub, runs) / L - 1)) < 0.006
    swapped = {**pub, "alpha": pub["beta"], "beta": pub["alpha"]}
    assert np.mean(np.abs(CHINCHILLA.predict(swapped, runs) / L - 1)) > 0.02
    as_c_over_n = runs.assign(tokens=runs["flops"] / runs["active_params"])
    assert np.mean(np.abs(CHINCHILLA.predict(pub, as_c_over_n) / L - 1)) > 0.02
