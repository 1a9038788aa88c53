"""scripts/ladder_check.py: issue 12's criteria on hand-made ladder rows (PASS, FAIL, WAIT), on known laws."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.fit import fit
from analysis.laws import get_law
from tests._scripts import script_module


def _module():
    return script_module("ladder_check")


def _rows(losses: dict, d: float = 2.8e6) -> pd.DataFrame:
    """(E, seed) -> loss at the ladder's top cell; realised N and G off their nominal values, as the family
    rule leaves them, plus an E = 8 run at the other expert LR that must not count."""
    rows = []
    for (e, seed), loss in losses.items():
        rows.append({"n_experts": e, "top_k": 1, "n_shared_experts": 0, "granularity": 1.1 if e > 1 else 1.0,
                     "expert_lr_scale": 1.0, "active_params": 8.0e5 * (1.004 if e > 1 else 0.998),
                     "total_params": 8.0e5 * (0.6 * e + 0.4),
                     "tokens": d, "seed": seed, "loss": loss, "nominal_granularity": 1.0,
                     "nominal_expert_lr_scale": 1.0, "nominal_active_params": 8.0e5,
                     "nominal_tokens": d})  # fmt: skip
    rows.append(
        {**rows[-1], "n_experts": 8, "expert_lr_scale": 0.35, "nominal_expert_lr_scale": 0.35, "loss": 9.0}
    )
    return pd.DataFrame(rows)


def test_gain_criterion_passes_fails_and_waits():
    m = _module()
    good = {(1, 0): 2.000, (1, 1): 2.010, (8, 0): 1.900, (8, 1): 1.912, (4, 0): 1.950, (16, 0): 1.870}
    out = m.check_gain(_rows(good))
    assert out["status"] == "PASS" and out["monotone"]
    assert abs(out["gain_over_dense"][8] - 0.099) < 1e-9 and out["gain8_in_sd"] > 5
    np.testing.assert_allclose(out["e8_paired_gains"], [0.100, 0.098], atol=1e-12)
    assert abs(out["e8_paired_sd"] - 0.002 / np.sqrt(2)) < 1e-12
    # an arm with one seed is set against dense's run of that seed, not against dense's mean
    paired = {k: v for k, v in good.items() if k != (4, 0)} | {(4, 1): 1.950}
    assert abs(m.check_gain(_rows(paired))["gain_over_dense"][4] - 0.060) < 1e-9
    # E = 16 no better than E = 8: not monotone
    assert m.check_gain(_rows({**good, (16, 0): 1.95}))["status"] == "FAIL"
    # a gain inside 5 seed sds: the seeds disagree by 0.05
    noisy = {**good, (1, 1): 1.95, (8, 1): 1.95}
    assert m.check_gain(_rows(noisy))["status"] == "FAIL"
    # one seed of E = 8: nothing to measure the noise with
    one = {k: v for k, v in good.items() if k != (8, 1)}
    assert m.check_gain(_rows(one))["status"] == "WAIT"
    # the twin table pairs each MoE run with the dense run of its nominal N, D and seed
    g = m.gaps(_rows(good))
    assert list(g["E"]) == [4, 8, 8, 16]  # ordered by E, D, N, seed
    assert abs(g["D_per_total_N"].iloc[0] - 2.8e6 / (8.0e5 * 2.8)) < 1e-9
    assert (
        sorted(g["E"]) == [4, 8, 8, 16]
        and abs(g[(g["E"] == 8) & (g["seed"] == 1)]["moe_minus_dense"].iloc[0] + 0.098) < 1e-9
    )


def test_the_gain_criterion_reads_both_cells_of_the_top_size():
    """The middle budget and the one-epoch cell (sweeps/ladder_top*.yaml): PASS where either passes, WAIT
    while the other lacks runs, FAIL when both are measured and neither passes."""
    m = _module()
    good = {(1, 0): 2.000, (1, 1): 2.010, (8, 0): 1.900, (8, 1): 1.912, (4, 0): 1.950, (16, 0): 1.870}
    flat = {k: (v if k[0] == 1 else 2.004) for k, v in good.items()}
    middle_fails = _rows(flat)
    assert m.check_gains(middle_fails)["status"] == "WAIT"
    assert m.check_gains(middle_fails)["middle"]["status"] == "FAIL"
    both = pd.concat([middle_fails, _rows(good, d=m.EPOCH_D)], ignore_index=True)
    out = m.check_gains(both)
    assert out["status"] == "PASS" and out["one_epoch"]["status"] == "PASS"
    assert out["one_epoch"]["cell"] == "N = 8e+05, D = 1.05e+07"
    neither = pd.concat([middle_fails, _rows(flat, d=m.EPOCH_D)], ignore_index=True)
    assert m.check_gains(neither)["status"] == "FAIL"


def test_isoflop_criterion_recovers_a_known_allocation():
    """Three budgets x five sizes of dense and E = 8 on a Chinchilla surface with alpha = beta (so N_opt ~
    C^0.5): the criterion fits both architectures with intervals, and waits with two sizes a budget."""
    m = _module()
    rng = np.random.default_rng(0)
    rows = []
    for e, shift in ((1, 0.0), (8, -0.02)):
        for c in (2e12, 4e12, 8e12):
            n_star = (c / 6 / 20) ** 0.5
            for k, n in enumerate(n_star * 1.8 ** np.arange(-2, 3)):
                d = c / (6 * n)
                loss = 1.0 + shift + 400 / n**0.34 + 400 * 20**0.34 / d**0.34 + rng.normal(0, 1e-4)
                rows.append({"n_experts": e, "top_k": 1, "n_shared_experts": 0, "granularity": 1.0,
                             "expert_lr_scale": 1.0, "shared_ratio": 0.0, "active_params": n, "tokens": d,
                             "flops": c, "seed": 0, "loss": loss, "size": k})  # fmt: skip
    df = pd.DataFrame(rows)
    out = m.check_isoflop(df, n_boot=30)
    assert out["status"] == "PASS"
    for arch in out["lab_flops"].values():
        assert arch["n_budgets"] == 3 and abs(arch["params"]["a"] - 0.5) < 0.05
        lo, hi = arch["intervals"]["a"]
        assert lo <= arch["params"]["a"] <= hi
    assert m.check_isoflop(df[df["size"] < 2], n_boot=5)["status"] == "WAIT"
    # E = 8 without a valley (its loss only rises with N at every budget): dense alone does not pass
    no_valley = df.copy()
    e8 = no_valley["n_experts"] == 8
    no_valley.loc[e8, "loss"] = 1.5 + 0.1 * no_valley.loc[e8, "size"]
    out = m.check_isoflop(no_valley, n_boot=5)
    assert out["status"] == "FAIL" and "E = 8: 15 of 15 runs" in out["why"]
    waiting = no_valley[~(e8 & (no_valley["flops"] == 8e12))]  # E = 8's last profile still training
    assert m.check_isoflop(waiting, n_boot=5)["status"] == "WAIT"
    m.MAX_EXPONENT_WIDTH = 1e-6  # no real interval is this narrow: the exponents no longer count as measured
    narrow = m.check_isoflop(df, n_boot=30)
    assert narrow["status"] == "FAIL" and "measures nothing" in narrow["why"]


def test_e_effect_over_the_grid_recovers_a_known_sign_pattern():
    """Dense and E = 4, 8, 16 on the ladder's grid under a joint MoE law whose MoE runs need more data (a
    larger, steeper D-term: omega > 0, zeta < 0): L(E = 16) - L(E = 1) is positive at few tokens and negative
    at many. The per-cell effect of the fitted law matches the true one, and every cell with a clear true
    effect has its interval on the true side."""
    m = _module()
    # near the ladder's own joint_moe fit: E = 16 behind dense by up to 0.09 at 1.1e6 tokens, ahead by up to
    # 0.13 at 1e7
    truth = {"a": 16.0, "b": 14.5, "c": 0.24, "alpha": -0.3, "beta": -0.2, "delta": -0.56, "gamma": 0.058,
             "omega": 1.24, "zeta": -0.093}  # fmt: skip
    law = get_law("joint_moe")
    sizes, tokens = m.SIZES, (*m.TOKENS, m.EPOCH_D)
    df = pd.DataFrame([{"n_experts": e, "top_k": 1, "n_shared_experts": 0, "granularity": 1.0,
                        "shared_ratio": 0.0, "expert_lr_scale": 1.0, "active_params": n, "tokens": d}
                       for e in (1, 4, 8, 16) for n in sizes for d in tokens])  # fmt: skip
    rng = np.random.default_rng(0)
    df["loss"] = law.predict(truth, df) * np.exp(1e-3 * rng.normal(size=len(df)))
    res = fit(df, law, bootstrap=16, max_starts=64)
    got = m._e_effect_cells(df, res)
    assert got["cells"] == len(m.SIZES) * len(m.TOKENS) + 1
    for cell in got["per_cell"]:
        probe = pd.DataFrame([{**m._template(df), "active_params": cell["N"], "tokens": cell["D"],
                               "n_experts": e} for e in (1, 16)])  # fmt: skip
        true = float(np.diff(law.predict(truth, probe))[0])
        assert abs(cell["L16_minus_L1"] - true) < 0.01, (cell, true)
        lo, hi = cell["interval"]
        if abs(true) > 0.03:
            assert (hi < 0) if true < 0 else (lo > 0), (cell, true)
    assert got["below_zero"] > 0 and got["above_zero"] > 0  # the law's pattern: both signs appear
