"""The lab's shared_ratio law earns its two extra parameters by held-out error only when the data have a
shared-expert effect; the MoE frontier picks the best configuration and measures efficiency leverage."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _analysis_helpers import JOINT_TRUE, SHARED_TRUE, moe_runs, with_loss

import analysis


def _compare(true):
    df = with_loss(moe_runs(), "shared_ratio", true, 0.005, seed=11)
    tab = analysis.compare_laws(df, laws=("joint_moe", "shared_ratio"), fraction=0.25).set_index("law")
    return tab["held_out_rmse"]


@pytest.mark.slow
def test_shared_ratio_law_earns_its_parameters_only_with_an_effect():
    with_effect = _compare(SHARED_TRUE)
    assert with_effect["shared_ratio"] < 0.3 * with_effect["joint_moe"], with_effect.to_dict()
    without = _compare({**SHARED_TRUE, "kappa": 0.0})
    assert without["shared_ratio"] > 0.9 * without["joint_moe"], without.to_dict()


def test_best_moe_config_and_efficiency_leverage():
    df = with_loss(moe_runs(), "shared_ratio", SHARED_TRUE, 0.002, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = analysis.fit(df, "shared_ratio")
    cands = [{"n_experts": e, "shared_ratio": s} for e in (4, 16) for s in (0.0, 0.25, 0.5, 0.75)]
    tab = analysis.best_moe_config(res, [1e19, 1e21], cands)
    assert set(tab["best_shared_ratio"]) == {0.5}  # the candidate nearest the fitted r_star ~ 0.4
    np.testing.assert_allclose(tab["efficiency_leverage"], tab["C_dense_equal_loss"] / tab["C"])
    # a law in which experts do nothing has leverage 1 at every budget
    flat = {**JOINT_TRUE, "delta": 0.0, "gamma": 0.0, "omega": 0.0, "zeta": 0.0, "kappa": 0.0, "r_star": 0.5}
    res.params = flat
    lev = analysis.best_moe_config(res, [1e19, 1e21, 1e23], cands)["efficiency_leverage"]
    np.testing.assert_allclose(lev, 1.0, rtol=0.02)
