"""``moelab suggest``: the ensemble design criterion against exact references, candidate rules, the sweep
it writes, and the claim itself: on a known law the suggested runs narrow the target's interval more than
the same FLOPs on random candidates or on the next grid rung (median over 20 seeds)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import datasets
from analysis.fitting import DELTA
from analysis.laws import get_law
from analysis.suggest import (
    Target,
    _full_fits,
    build_candidates,
    design_from_ensemble,
    design_variance,
    exchange_design,
    fit_discrepancy,
    greedy_design,
    grid_points,
    grid_rung,
    random_design,
    replay,
    replay_split,
    simulate,
    sweep_dict,
)
from moelab.accounting import param_counts, train_flops_per_token
from moelab.cli import main
from moelab.sweep.spec import SweepSpec, build_run
from tests._scripts import script_module

TRUTH = {"E": 1.0, "A": 48.0, "B": 160.0, "alpha": 0.31, "beta": 0.30}  # CPU-scale chinchilla law
BASE = {
    "model": {"vocab_size": 256, "max_seq_len": 128},
    "train": {"seq_len": 128, "batch_size": 16, "lr": 2e-3},
}
LADDER = {"active_params": [1e5, 2e5, 4e5, 8e5], "tokens": [2e6, 5e6, 1.25e7], "n_experts": [8]}


def _conditioned_variance(cov, chosen, noise_var):
    """Slow reference: Var(t | y_A) = S_tt - S_tA (S_AA + s^2 I)^-1 S_At for the chosen set A at once."""
    a = [j + 1 for j in chosen]
    if not a:
        return cov[0, 0]
    S_aa = cov[np.ix_(a, a)] + noise_var * np.eye(len(a))
    return cov[0, 0] - cov[0, a] @ np.linalg.solve(S_aa, cov[a, 0])


def test_greedy_conditioning_matches_joint_gaussian_posterior_and_picks_the_best_ratio():
    rng = np.random.default_rng(0)
    for _trial in range(20):
        M = 12
        L = rng.normal(size=(M + 1, 4))
        cov = L @ L.T + 0.01 * np.eye(M + 1)
        cost = rng.uniform(0.5, 3.0, size=M)
        nv = 0.3
        d = greedy_design(cov, cost, nv, k=5, budget=6.0)
        assert d.flops <= 6.0 + 1e-9 and len(d.chosen) == len(set(d.chosen))
        for i in range(len(d.chosen) + 1):  # every intermediate variance is the exact posterior variance
            exact = _conditioned_variance(cov, d.chosen[:i], nv)
            assert d.variance[i] == pytest.approx(exact, rel=1e-9, abs=1e-12)
        # the first pick maximises the one-step reduction per unit cost (brute force over candidates)
        red = [
            (cov[0, 0] - _conditioned_variance(cov, [j], nv)) / cost[j] for j in range(M) if cost[j] <= 6.0
        ]
        ok = [j for j in range(M) if cost[j] <= 6.0]
        assert d.chosen[0] == ok[int(np.argmax(red))]
        # with a budget, the better of the per-FLOP and the absolute greedy is kept
        both = [greedy_design(cov, cost, nv, k=5, budget=6.0, per_flop=p).variance[-1] for p in (True, False)]
        Z = rng.multivariate_normal(np.zeros(M + 1), cov, size=4000)
        e = design_from_ensemble(Z[:, 0], Z[:, 1:], cost, nv, k=5, budget=6.0)
        assert _conditioned_variance(cov, e.chosen, nv) <= min(both) * 1.1  # sample covariance ~ cov


def test_ensemble_criterion_equals_the_least_squares_posterior_on_a_linear_model():
    """On a linear model the bootstrap ensemble's reduction equals the exact OLS variance reduction
    (the refit with one more observation), to the bootstrap's sampling error."""
    rng = np.random.default_rng(1)
    n, sigma = 40, 0.1
    X = np.column_stack([np.ones(n), rng.uniform(0, 1, n)])  # observed design: x in [0, 1]
    y = X @ np.array([1.0, -0.5]) + sigma * rng.normal(size=n)
    boot = []
    for _ in range(3000):
        i = rng.integers(0, n, n)
        boot.append(np.linalg.lstsq(X[i], y[i], rcond=None)[0])
    boot = np.array(boot)
    x_t = np.array([1.0, 4.0])  # extrapolation target
    cands = np.column_stack([np.ones(5), np.array([0.0, 0.5, 1.0, 2.0, 3.0])])
    t, preds = boot @ x_t, boot @ cands.T
    d = design_from_ensemble(t, preds, np.ones(5), sigma**2, k=1)
    assert d.chosen == [4]  # the candidate nearest the target
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    nv = np.sum((y - X @ beta) ** 2) / n  # the pairs bootstrap's covariance is ~ nv (X'X)^-1
    info = X.T @ X / nv
    before = x_t @ np.linalg.solve(info, x_t)
    exact, ens = [], []
    for j in range(5):
        exact.append(x_t @ np.linalg.solve(info + np.outer(cands[j], cands[j]) / nv, x_t) / before)
        S = np.cov(np.column_stack([t, preds[:, j]]), rowvar=False)
        ens.append((S[0, 0] - S[0, 1] ** 2 / (nv + S[1, 1])) / S[0, 0])
    # the pairs bootstrap estimates a sandwich covariance, so agreement is close, not exact
    assert np.argsort(ens).tolist() == np.argsort(exact).tolist()
    assert np.allclose(ens, exact, atol=0.06)


def test_misfit_variance_is_the_sandwich_variance_of_the_unweighted_refit():
    """With a discrepancy of variance tau_c^2 at each candidate, every variance the greedy reports equals the
    exact variance of ordinary least squares refitted with the picks, heteroscedastic errors and all
    (Var = H^-1 X' Omega X H^-1, slow and direct), and a pick that would widen the interval is refused."""
    rng = np.random.default_rng(3)
    P, M, s2 = 3, 10, 0.04
    X0 = rng.normal(size=(25, P))  # the done runs
    G = np.vstack([rng.normal(size=P) * 3.0, rng.normal(size=(M, P)) * 2.0])  # target, then candidates
    H0 = X0.T @ X0
    cov = s2 * G @ np.linalg.solve(H0, G.T)
    tau2 = rng.uniform(0.0, 0.2, size=M)
    for per_flop in (True, False):
        d = greedy_design(cov, np.ones(M), s2, k=6, per_flop=per_flop, misfit_var=tau2)
        assert len(d.chosen) >= 1
        for i in range(len(d.chosen) + 1):
            A = d.chosen[:i]
            Xa = np.vstack([X0, G[[j + 1 for j in A]]])
            omega = np.concatenate([np.full(len(X0), s2), s2 + tau2[A]])
            Hinv = np.linalg.inv(Xa.T @ Xa)
            exact = G[0] @ Hinv @ (Xa.T * omega) @ Xa @ Hinv @ G[0]
            assert d.variance[i] == pytest.approx(exact, rel=1e-8)
        assert all(b < a for a, b in zip(d.variance, d.variance[1:], strict=False))  # each pick narrows
    # the best candidate without misfit, given a misfit far above what it can pin down, is never picked
    blind = greedy_design(cov, np.ones(M), s2, k=1)
    big = np.zeros(M)
    big[blind.chosen[0]] = 100.0
    assert blind.chosen[0] not in greedy_design(cov, np.ones(M), s2, k=M, misfit_var=big).chosen


def test_exchange_reaches_the_brute_force_optimum_the_greedy_misses():
    """design_variance is the greedy's running value (with misfit too); Fedorov's exchange from the greedy
    never ends worse and stays within the greedy's FLOPs and k; where the greedy misses the best set found by
    enumerating every subset, the exchange often reaches it (a local search: not always)."""
    rng = np.random.default_rng(11)
    greedy_short = exchange_fixed = 0
    for _trial in range(40):
        M = 9
        L = rng.normal(size=(M + 1, 3))
        cov = L @ L.T + 0.05 * np.eye(M + 1)
        cost = rng.uniform(0.5, 3.0, size=M)
        tau2 = rng.uniform(0.0, 0.05, size=M)
        nv = 0.2
        g = greedy_design(cov, cost, nv, k=4, budget=5.0, per_flop=False, misfit_var=tau2)
        v = design_variance(cov, np.array([g.chosen]), nv, tau2)[0]
        assert v == pytest.approx(g.variance[-1], rel=1e-9)
        ex = exchange_design(cov, cost, nv, g, k=4, budget=5.0, misfit_var=tau2)
        assert ex.variance[-1] <= g.variance[-1] * (1 + 1e-12)
        assert cost[ex.chosen].sum() <= min(5.0, g.flops) * (1 + 1e-9)
        assert len(set(ex.chosen)) == len(ex.chosen) <= 4
        assert design_variance(cov, np.array([ex.chosen]), nv, tau2)[0] == pytest.approx(ex.variance[-1])
        best = min(
            design_variance(cov, np.array([A]), nv, tau2)[0]
            for m in range(1, 5)
            for A in itertools.combinations(range(M), m)
            if cost[list(A)].sum() <= g.flops * (1 + 1e-9)
        )
        greedy_short += g.variance[-1] > best * (1 + 1e-6)
        exchange_fixed += g.variance[-1] > best * (1 + 1e-6) and ex.variance[-1] <= best * (1 + 1e-6)
    # seed 11: the greedy misses the best set in 20 of 40 trials, the exchange reaches it in 10 of those 20
    assert greedy_short >= 5 and exchange_fixed >= greedy_short // 3
    # design_from_ensemble keeps the best of the greedies and their exchanges
    Z = rng.multivariate_normal(np.zeros(M + 1), cov, size=4000)
    e = design_from_ensemble(Z[:, 0], Z[:, 1:], cost, nv, k=4, budget=5.0, misfit_var=tau2)
    S = np.cov(Z, rowvar=False)
    for per_flop in (True, False):
        g = greedy_design(S, cost, nv, k=4, budget=5.0, per_flop=per_flop, misfit_var=tau2)
        assert e.variance[-1] <= g.variance[-1] * (1 + 1e-12)
        ex = exchange_design(S, cost, nv, g, k=4, budget=5.0, misfit_var=tau2)
        assert e.variance[-1] <= ex.variance[-1]


def test_discrepancy_is_found_where_the_law_misfits_and_not_where_it_holds():
    """fit_discrepancy on 64 runs of a known chinchilla law (0.5% noise) finds next to no misfit; with a
    bump of 2% x u^2 along tokens per parameter (u standardised), which the law cannot follow, it finds a
    discrepancy far above the noise, with a likelihood ratio far past the 5% level (2.7)."""
    law = get_law("chinchilla")
    theta = law.from_params(np.array([TRUTH[p] for p in law.params]))
    _, cands, _ = _ladder_and_candidates()
    X = law.features(cands.table)
    u = X[:, 1] - X[:, 0]
    u = (u - u.mean()) / u.std()
    data = [
        (X, law.log_predict(theta, X, np) + amp * u**2 + 0.005 * np.random.default_rng(s).normal(size=len(X)))
        for amp in (0.0, 0.02)
        for s in (0, 1)
    ]
    fits = _full_fits(law, data, theta[None], DELTA)
    nv = [
        float(np.mean((law.log_predict(t, Xd, np) - y) ** 2)) for t, (Xd, y) in zip(fits, data, strict=True)
    ]
    clean, bent = np.split(np.array(fit_discrepancy(law, data, fits, nv)), 2)
    assert all(d.n_folds == 8 and d.n_heldout > 64 for d in (*clean, *bent))  # +-N, +-D, +-(N+D), +-(D-N)
    assert all(d.lr < 2.71 and d.kappa2 < 1e-4 for d in clean)
    assert all(d.lr > 20 and d.kappa2 > 1e-3 for d in bent)
    far = bent[0].distance(X[:1] + 10 * bent[0].scale)  # ten standard deviations out
    assert far[0] > 9 and bent[0].variance(X[:3]).max() == 0.0  # zero on the runs themselves


def test_candidates_respect_the_flop_cap_the_epoch_the_family_and_the_table():
    law = get_law("chinchilla")
    pts = grid_points(
        {"active_params": [5e2, 1e5, 1e6], "tokens": [2e6, 2e8], "n_experts": [1, 8], "top_k": [2]}
    )
    assert all(p["top_k"] == 1 for p in pts if p["n_experts"] == 1)  # dense points normalised
    existing = build_candidates(
        [{"active_params": 1e5, "tokens": 2e6, "n_experts": 8, "top_k": 2}], BASE
    ).table
    c = build_candidates(pts, BASE, max_flops=1e14, max_tokens=1e8, existing=existing, columns=law.columns)
    assert c.excluded["invalid shape"] == 4  # active_params 500 < the family's 1e3 floor
    assert c.excluded["over one epoch"] + c.excluded["over the FLOP cap"] == 4  # every 2e8-token run
    assert c.excluded["already run"] == 1
    assert len(c) == 3 and np.all(c.flops <= 1e14) and np.all(c.table["tokens"] <= 1e8)
    assert np.all(c.table["tokens"] % (16 * 128) == 0)  # whole steps of the base batch
    # the cost is the accounting's, not 6ND
    spec = SweepSpec.from_dict({"name": "x", **BASE})
    run = build_run(spec, c.points[0])
    assert c.flops[0] == train_flops_per_token(run.model, 128) * run.train.tokens


def test_sweep_dict_keeps_the_base_and_plans_to_the_same_models():
    pts = grid_points(
        {"active_params": [1e5, 3e5], "tokens": [2e6], "n_experts": [1, 8], "shared_ratio": [0.5]}
    )
    c = build_candidates(pts, BASE)
    base = {**BASE, "model": {**BASE["model"], "n_experts": 4}, "seeds": [0], "max_concurrency": 1}
    spec = SweepSpec.from_dict(sweep_dict(c.points, base, "next", "d"))
    trials = spec.trials()
    assert spec.generator == "zip" and len(trials) == len(c) == 4 and spec.train["lr"] == 2e-3
    got = sorted(param_counts(t.model).active for t in trials)
    assert got == sorted(c.table["active_params"])


def _ladder_and_candidates():
    law = get_law("chinchilla")
    ladder = build_candidates(grid_points(LADDER), BASE)
    df = ladder.table
    n = [float(f"{1e5 * 10 ** (i / 4):.3g}") for i in range(10)]
    d = [float(f"{1e6 * 10 ** (i / 4):.3g}") for i in range(10)]
    cands = build_candidates(
        grid_points({"active_params": n, "tokens": d, "n_experts": [8]}),
        BASE,
        max_flops=10 * ladder.flops.max(),
        max_tokens=5e7,
        existing=df,
        columns=law.columns,
    )
    rung = build_candidates([{**p, "n_experts": 8} for p in grid_rung(df[["active_params", "tokens"]])], BASE)
    return df, cands, rung


def test_random_and_grid_designs_spend_what_they_are_given():
    df, cands, rung = _ladder_and_candidates()
    assert len(rung) == 3 and np.allclose(rung.table["tokens"], sorted(df["tokens"].unique()))
    assert rung.table["active_params"].iloc[0] > 1.5 * df["active_params"].max()
    budget = rung.flops.sum()
    pick = random_design(cands.flops, budget, np.random.default_rng(0))
    assert cands.flops[pick].sum() <= budget and cands.flops[pick].sum() > 0.8 * budget


def test_suggested_runs_narrow_the_interval_more_than_random_or_the_next_grid_rung():
    """The acceptance claim, on a known chinchilla law at CPU scale (12 ladder runs, 1% noise): every design
    spends the FLOPs of the next grid rung; each is judged by the width of hunyuan-large's 95% bootstrap
    interval after refitting with its runs. Median over 20 seeds of width(after) / width(before) (60 seeds
    with 200 resamples: 0.67 suggested, 0.82 random, 0.92 grid rung; suggested narrower in 80% / 83% of
    seeds; here 0.75, 0.85, 0.87)."""
    df, cands, rung = _ladder_and_candidates()
    out = simulate(
        "chinchilla", TRUTH, df, cands, rung, Target("hunyuan-large", 7e12), seeds=range(20), n_boot=64
    )
    ratio = {
        k: float(np.median(out[f"width_{k}"] / out["width_before"])) for k in ("suggest", "random", "grid")
    }
    print("median width after / before:", ratio)
    assert np.all(out["flops_suggest"] <= out["flops_grid"] * (1 + 1e-9))
    assert np.all(out["flops_random"] <= out["flops_grid"] * (1 + 1e-9))
    assert ratio["suggest"] < ratio["random"] and ratio["suggest"] < ratio["grid"]
    assert ratio["suggest"] < 0.9  # and it buys a real reduction
    for other in ("random", "grid"):  # paired: narrower than the alternative in most seeds
        assert np.mean(out["width_suggest"] < out[f"width_{other}"]) > 0.5


def test_replay_uses_the_losses_the_runs_reached(tmp_path):
    """replay (the real-runs comparison) on a table: the designs only ever add runs from the pool or the
    rung, with the losses given, within the rung's FLOPs."""
    law = get_law("chinchilla")
    df, cands, rung = _ladder_and_candidates()
    frames, rng = [], np.random.default_rng(0)
    for t, c in ((df, None), (cands.table, cands.flops), (rung.table, rung.flops)):
        t = t.assign(loss=law.predict(TRUTH, t) * np.exp(0.01 * rng.normal(size=len(t))))
        frames.append(t.assign(flops=c if c is not None else 6 * t["active_params"] * t["tokens"]))
    out = replay(law, *frames, Target("hunyuan-large", 7e12), seeds=[0, 1], n_boot=24)
    assert len(out) == 2 and np.all(out["flops_suggest"] <= rung.flops.sum() * (1 + 1e-9))
    assert np.all(out["runs_grid"] == 3) and np.all(out["width_suggest"] > 0)


def test_on_chinchillas_runs_the_misfit_model_narrows_the_interval_where_the_blind_design_did_not():
    """The real-runs replay (docs/analysis.md): Chinchilla's runs below its 1e20 IsoFLOP profile done, that
    profile the rung, target 70B on 1.4T tokens. Without the misfit term the suggested runs (the extremes of
    tokens per parameter, misfit by 1.6-4%) barely narrowed the interval; with it they beat random runs of
    the same FLOPs (4 seeds here, 48 resamples; the note's 10 seeds x 128: 0.77 vs 0.83 random, 0.79 rung)."""
    done, pool, rung = replay_split(datasets.load("epoch-chinchilla"), 1e20, 15)
    assert (len(done), len(pool), len(rung)) == (123, 117, 15)
    target = Target("chinchilla", 1.4e12, model={"active_params": 7e10, "n_experts": 1})
    ratio = {}
    for misfit in (True, False):
        out = replay(
            "chinchilla", done, pool, rung, target, seeds=range(4), n_boot=48, n_starts=16, misfit=misfit
        )
        for k in ("suggest", "random"):
            ratio[k, misfit] = float(np.median(out[f"width_{k}"] / out["width_before"]))
    print("median width after / before:", ratio)
    assert ratio["suggest", True] < ratio["random", True] and ratio["suggest", True] < 0.9
    assert ratio["suggest", True] < ratio["suggest", False] - 0.1


def _results(tmp_path):
    law = get_law("chinchilla")
    df = build_candidates(grid_points(LADDER), BASE).table
    rng = np.random.default_rng(0)
    df["loss"] = law.predict(TRUTH, df) * np.exp(0.01 * rng.normal(size=len(df)))
    df["flops"] = 6 * df["active_params"] * df["tokens"]
    df = df.assign(sweep="ladder", status="succeeded", run_id=[f"r{i}" for i in range(len(df))])
    (tmp_path / "ladder").mkdir()
    df.to_parquet(tmp_path / "ladder" / "runs.parquet")
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump({"name": "ladder", **BASE, "axes": {"active_params": [1e5]}, "seeds": [0]})
    )
    return tmp_path / "ladder", base


def test_cli_writes_a_sweep_that_plans(tmp_path, capsys):
    results, base = _results(tmp_path)
    out = tmp_path / "next.yaml"
    args = ["suggest", str(results), "--base", str(base), "--k", "4", "--bootstrap", "24", "--out", str(out)]
    assert main([*args, "--corpus-tokens", "5e7", "--json"]) == 0
    rep = __import__("json").loads(capsys.readouterr().out)
    spec = SweepSpec.from_file(out)
    trials = spec.trials()
    assert spec.name == "ladder-next" and len(trials) == len(rep["runs"]) <= 4
    assert spec.train["lr"] == 2e-3 and spec.seeds == (0,)
    assert all(t.run.train.tokens <= 5e7 for t in trials)
    assert rep["expected_width_after"] < rep["interval"][1] - rep["interval"][0]
    assert math.isfinite(rep["prediction"])
    assert rep["misfit"]["folds"] > 0 and all(r["misfit_sd"] >= 0 for r in rep["runs"])
    # an existing file is not overwritten without --force, and nothing else is written
    before = out.read_text()
    assert main([*args, "--corpus-tokens", "5e7"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--values", "depth=1,2"], "--values 'depth=1,2': expected AXIS=V1,V2 with AXIS one of"),
        (["--values", "n_experts=1.5"], "n_experts must be integers >= 1"),
        (["--k", "0"], "--k must be an integer >= 1"),
        (["--bootstrap", "5"], "--bootstrap must be >= 20"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--law", "clark", "--flops", "1e22"], "has no tokens term"),
        (["--max-flops", "1"], "no candidate run is left"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, message):
    results, base = _results(tmp_path)
    out = tmp_path / "next.yaml"
    code = main(
        ["suggest", str(results), "--base", str(base), "--out", str(out), "--corpus-tokens", "5e7", *extra]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len([e for e in err if e.startswith("moelab: error")]) == 1
    assert message in err[-1] and not out.exists()


def test_help_explains_the_method(capsys):
    with pytest.raises(SystemExit):
        main(["suggest", "--help"])
    text = capsys.readouterr().out
    assert "Atkinson" in text and "per FLOP" in text and "--budget" in text
    assert "Kennedy & O'Hagan" in text and "--no-misfit" in text


def test_grid_rung_of_a_runs_table():
    df = pd.DataFrame({"active_params": [1e5, 2e5, 4e5, 4e5], "tokens": [1e6, 1e6, 1e6, 2e6]})
    assert grid_rung(df) == [
        {"active_params": 8e5, "tokens": 1e6},
        {"active_params": 8e5, "tokens": 2e6},
    ]


def test_the_ladder_replay_script_runs_on_the_committed_ladder(capsys):
    """scripts/suggest_replay.py (issue 16's real-runs check, docs/analysis.md) on the committed ladder: the
    split it prints and one row per design (2 seeds, 16 resamples here; the note's figures use 20 x 256)."""
    assert script_module("suggest_replay").main(["--seeds", "2", "--bootstrap", "16"]) == 0
    out = capsys.readouterr().out
    assert "runs done" in out and "next rung 4 runs" in out
    rows = [line.split() for line in out.splitlines()]
    rows = [r for r in rows if r[:1] in (["suggest"], ["random"], ["grid"])]
    assert [r[0] for r in rows] == ["suggest", "random", "grid"]
    assert all(0 < float(r[1]) < 10 for r in rows)
