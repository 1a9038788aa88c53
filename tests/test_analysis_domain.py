"""Issue 12's analysis rules against slow references: distinct nominal levels (not rounding), each law on its
own domain (Chinchilla's on dense runs, Clark's on one token budget), a held-out split stratified over dense
and MoE runs with a bootstrap interval of its error, parameters flagged on a bound, and the ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _analysis_helpers import CHIN_TRUE, JOINT_TRUE, chinchilla_runs, grid_runs, with_loss

from analysis.domain import _cluster, check_variation, law_domain, levels, n_levels
from analysis.fit import fit
from analysis.fitting import FitWarning
from analysis.laws import get_law
from analysis.validate import error_interval, heldout_mask, holdout, rank_laws, strata
from moelab.errors import MoelabError


def _components(x: np.ndarray, tol: float) -> list[frozenset]:
    """Slow reference: connected components of the graph linking values within ``tol`` (union-find)."""
    parent = list(range(len(x)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(x)):
        for j in range(len(x)):
            if abs(x[i] - x[j]) <= tol and find(i) != find(j):
                parent[find(i)] = find(j)
    groups: dict[int, set] = {}
    for i in range(len(x)):
        groups.setdefault(find(i), set()).add(i)
    return sorted(map(frozenset, groups.values()), key=min)


def test_levels_group_realised_values_like_single_linkage():
    rng = np.random.default_rng(0)
    for _ in range(30):
        nominal = rng.choice([1.0, 1.5, 2.0, 4.0, 8.0], size=rng.integers(2, 5), replace=False)
        v = np.repeat(nominal, 4) * rng.uniform(0.97, 1.1, 4 * len(nominal))
        got = _cluster(v, "granularity")
        parts = sorted((frozenset(np.flatnonzero(got == g)) for g in np.unique(got)), key=min)
        assert parts == _components(np.log(v), np.log(1.2))
    # shared_ratio lives on an absolute scale (0 is a value)
    s = np.array([0.0, 0.01, 0.25, 0.26, 0.5])
    assert len(np.unique(_cluster(s, "shared_ratio"))) == 3


def test_needs_variation_counts_nominal_levels_not_rounding():
    law = get_law("granularity")
    df = pd.DataFrame(
        {"active_params": [1e5, 2e5, 4e5] * 4, "tokens": np.repeat([1e6, 3e6, 1e7, 3e7], 3)}
    )
    df["granularity"] = np.linspace(1.01, 1.10, len(df))  # one nominal G = 1, realised by rounding
    with pytest.raises(MoelabError, match="granularity is constant up to rounding"):
        check_variation(df, law)
    with pytest.raises(MoelabError, match="granularity is constant"):
        check_variation(df.assign(nominal_granularity=1.0), law)
    two = df.assign(nominal_granularity=[1.0, 2.0] * 6)  # the sweep asked for two levels
    check_variation(two, law)
    assert n_levels(two, "granularity") == 2 and n_levels(df, "granularity") == 1
    np.testing.assert_array_equal(levels(two, "granularity"), two["nominal_granularity"])


def _mixed(noise=0.003, seed=0) -> pd.DataFrame:
    """Dense and MoE (E = 4, 16) runs of the joint MoE law over 4 sizes x 3 token budgets."""
    df = grid_runs(active_params=np.logspace(7, 9, 4), tokens=np.logspace(9, 11, 3), n_experts=[1, 4, 16])
    return with_loss(df, "joint_moe", JOINT_TRUE, noise, seed)


def test_each_law_gets_its_domain():
    df = _mixed()
    dom = law_domain(get_law("chinchilla"), df)
    assert dom.rule == "dense" and dom.n == 12 and (df.loc[dom.mask, "n_experts"] == 1).all()
    moe16 = df[df["n_experts"] == 16]
    assert law_domain(get_law("chinchilla"), moe16).rule == "all"  # one architecture
    with pytest.raises(MoelabError, match="without a dense baseline"):
        law_domain(get_law("chinchilla"), df[df["n_experts"] > 1])
    # Clark's law has no data term: one token budget, the one with the most runs, ties to the larger D
    extra = df.iloc[[0]].assign(tokens=1e9, run_id="x")
    dom = law_domain(get_law("clark"), pd.concat([df, extra], ignore_index=True))
    assert dom.rule == "level" and dom.n == 13 and "D = 1e+09" in dom.text
    dom = law_domain(get_law("clark"), df)
    assert dom.n == 12 and (df.loc[dom.mask, "tokens"] == 1e11).all()
    assert law_domain(get_law("joint_moe"), df).rule == "all"
    # fit() uses it
    res = fit(df, "chinchilla", max_starts=16)
    assert res.n_points == 12 and res.domain.rule == "dense"


def _reference_mask(df, fraction):
    C = df["flops"].to_numpy()
    out = np.zeros(len(df), bool)
    for s in ("dense", "moe"):
        idx = [i for i in range(len(df)) if (df["n_experts"].iloc[i] > 1) == (s == "moe")]
        k = int(round(fraction * len(idx)))
        if k:
            cut = sorted(C[idx])[-k]
            held = [i for i in idx if C[i] >= cut]
            if len(idx) - len(held) >= 6:
                out[held] = True
    return out


def test_split_holds_out_the_top_of_each_stratum():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(6, 40))
        df = pd.DataFrame(
            {
                "n_experts": rng.choice([1, 8], size=n),
                "flops": rng.choice(np.logspace(12, 15, 7), size=n),  # ties: whole budgets go together
            }
        )
        f = float(rng.uniform(0.15, 0.45))
        try:
            got = heldout_mask(df, f)
        except MoelabError:
            assert not _reference_mask(df, f).any() or _reference_mask(df, f).all()
            continue
        np.testing.assert_array_equal(got, _reference_mask(df, f))
        for s in np.unique(strata(df)):  # every stratum with room has held-out runs, at its top
            m = strata(df) == s
            if got[m].any():
                assert df["flops"][m & got].min() >= df["flops"][m & ~got].max()
    df = pd.DataFrame({"n_experts": [1, 1, 8, 8], "flops": [1.0, 2.0, 3.0, 4.0]})
    np.testing.assert_array_equal(heldout_mask(df, threshold=2.0), [False, True, True, True])


def test_heldout_error_interval_matches_a_loop():
    rng = np.random.default_rng(2)
    obs = rng.uniform(2, 3, 9)
    pred = obs * (1 + rng.normal(0, 0.02, 9))
    groups = np.array(["dense"] * 4 + ["moe"] * 5, dtype=object)
    samples = pred * (1 + rng.normal(0, 0.01, (50, 9)))
    got = error_interval(obs, pred, groups, samples, n_resample=400, seed=3)
    # the same draws, one resample at a time
    r = np.random.default_rng(3)
    draws = [r.choice(np.flatnonzero(groups == g), size=(400, (groups == g).sum())) for g in ("dense", "moe")]
    pick = r.integers(0, 50, 400)
    errs = []
    for b in range(400):
        idx = np.concatenate([d[b] for d in draws])
        errs.append(np.mean([abs(samples[pick[b], i] / obs[i] - 1) for i in idx]))
    assert got == pytest.approx(tuple(np.percentile(errs, [2.5, 97.5])), rel=1e-12)
    point = np.mean(np.abs(pred / obs - 1))
    lo, hi = error_interval(obs, pred, groups, None, n_resample=400)
    assert lo <= point <= hi


def test_ranking_uses_the_stratified_split_and_each_domain():
    df = _mixed()
    r = rank_laws(df, ("chinchilla", "clark", "joint_moe"), bootstrap=8, max_starts=16)
    held = df[df["run_id"].isin(r.heldout_ids)]
    assert set(held["n_experts"] > 1) == {True, False}  # dense and MoE both held out
    t = r.table.set_index("law")
    assert r.best == "joint_moe" and bool(t.loc["joint_moe", "ranked"])
    assert t.loc["joint_moe", "n_held_out"] == len(held)
    lo, hi = t.loc["joint_moe", ["held_out_lo", "held_out_hi"]]
    assert 0 <= lo <= hi and np.isfinite(hi)
    # Chinchilla's law is scored on the dense held-out runs only, so it is not ranked against the others
    assert not t.loc["chinchilla", "ranked"] and "dense" in t.loc["chinchilla", "not_ranked"]
    assert t.loc["chinchilla", "n_held_out"] == (held["n_experts"] == 1).sum()
    assert not t.loc["clark", "ranked"]


def test_parameters_on_a_bound_are_flagged():
    df = chinchilla_runs(noise=0.0, params={**CHIN_TRUE, "E": 1e-6})  # no irreducible term
    with pytest.warns(FitWarning, match="edge"):
        res = fit(df, "chinchilla", max_starts=16)
    assert "E" in res.on_bound and "E" in res.to_dict()["on_bound"]
    h = holdout(chinchilla_runs(noise=0.003), "chinchilla", max_starts=16, bootstrap=8)
    assert h.on_bound == [] and h.holdout.interval[0] <= h.holdout.interval[1]
    assert "bootstrap" in h.holdout.interval_basis


def test_n_convention_shift_refits_the_same_runs():
    from analysis.convention import convention_shift

    df = chinchilla_runs(noise=0.003, seed=4)
    df["active_params_with_embedding"] = df["active_params"] + 3e7  # an embedding of 3e7 parameters
    res = holdout(df, "chinchilla", max_starts=16, bootstrap=8)
    shift = convention_shift(res, df.reset_index(drop=True), max_starts=16).set_index("parameter")
    # the slow obvious reference: the same training runs with N replaced, fitted directly
    rows = df.reset_index(drop=True).loc[res.data.index]
    direct = fit(rows.assign(active_params=rows["active_params_with_embedding"]), "chinchilla", max_starts=16)
    for k in ("alpha", "beta"):
        assert shift.loc[k, "with_embedding"] == pytest.approx(direct.params[k], rel=1e-9)
        assert shift.loc[k, "shift"] == pytest.approx(direct.params[k] - res.params[k], rel=1e-9)
        lo, hi = res.intervals[k]
        assert bool(shift.loc[k, "inside"]) == (lo <= direct.params[k] <= hi)
    assert shift.loc["alpha", "with_embedding"] > res.params["alpha"]  # a fixed offset steepens the N term


def test_isoflop_budgets_of_a_grid_never_chain_into_a_wide_budget():
    """A grid of N x D (no nominal budget) whose products lie within 20-30% of each other: every IsoFLOP
    profile holds runs within 0.06 decades of compute, and a nominal budget groups exactly as given."""
    from analysis.isoflop import budgets_of, isoflop_minima

    df = grid_runs(active_params=np.geomspace(1e6, 1e8, 9), tokens=np.geomspace(1e8, 1e10, 9))
    df["flops"] = 6 * df["active_params"] * df["tokens"]
    df["loss"] = 2 + 0.05 * (np.log(df["active_params"]) - 0.5 * np.log(df["flops"]) + 5) ** 2
    for ids in isoflop_minima(df)["run_ids"]:
        c = df.set_index("run_id").loc[ids, "flops"]
        assert np.log10(c.max() / c.min()) <= 0.06 + 1e-12
    b = budgets_of(df)
    for label in np.unique(b):  # every window is at most 0.06 decades wide
        c = df["flops"][b == label]
        assert np.log10(c.max() / c.min()) <= 0.06 + 1e-12
    nominal = df.assign(nominal_flops=np.where(df["flops"] > 1e16, 1e17, 1e15))
    np.testing.assert_array_equal(budgets_of(nominal), nominal["nominal_flops"])
