"""Synthetic recovery: every law's fit recovers the parameters its data were generated from."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _analysis_helpers import (
    CLARK_TRUE,
    GRAN_TRUE,
    JOINT_TRUE,
    SHARED_TRUE,
    chinchilla_runs,
    moe_runs,
    with_loss,
)

import analysis

CASES = {
    # law: (true params, noise, {param: absolute tolerance or None for relative 5%})
    "granularity": (GRAN_TRUE, 0.002, {"alpha": 0.02, "beta": 0.02, "gamma": 0.15}),
    "clark": (CLARK_TRUE, 0.002, {"a": 0.005, "b": 0.02, "c": 0.003, "d": 0.05}),
    "joint_moe": (JOINT_TRUE, 0.002, {"alpha": 0.03, "beta": 0.03, "delta": 0.1, "gamma": 0.01}),
    "shared_ratio": (SHARED_TRUE, 0.002, {"alpha": 0.03, "beta": 0.03, "kappa": 0.5, "r_star": 0.05}),
}


def test_chinchilla_recovers_parameters():
    res = analysis.fit(chinchilla_runs(noise=0.002, seed=3), "chinchilla")
    for k, v in {"E": 1.8, "alpha": 0.35, "beta": 0.37}.items():
        assert res.params[k] == pytest.approx(v, rel=0.03), k
    for k, v in {"A": 480.0, "B": 2100.0}.items():
        assert res.params[k] == pytest.approx(v, rel=0.25), k


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_moe_law_recovers_parameters(name):
    true, noise, tol = CASES[name]
    df = with_loss(moe_runs(), name, true, noise, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = analysis.fit(df, name)
    for k, t in tol.items():
        assert res.params[k] == pytest.approx(true[k], abs=t), (k, res.params)
    # the fitted law reproduces the noiseless losses to well under the noise
    clean = analysis.get_law(name).predict(true, df)
    assert np.max(np.abs(res.predict(df) / clean - 1)) < 3 * noise
