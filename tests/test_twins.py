"""analysis.twins: each MoE run beside its dense twin (same nominal N, D and seed), and the report's table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.report.build import _trend_notes, _twins_table
from analysis.twins import gap_trend, moe_vs_dense


def _run(e, n, d, seed, loss, **kw):
    return {"run_id": f"E{e}-N{n:g}-D{d:g}-s{seed}", "n_experts": e, "top_k": 1, "n_shared_experts": 0,
            "granularity": 1.0, "expert_lr_scale": 1.0, "active_params": n * (1.003 if e > 1 else 0.998),
            "tokens": d, "seed": seed, "loss": loss, "total_params": n * e, "nominal_active_params": n,
            "nominal_tokens": d, "nominal_granularity": 1.0, "nominal_expert_lr_scale": 1.0} | kw  # fmt: skip


def test_each_moe_run_meets_the_dense_run_of_its_nominal_size_tokens_and_seed():
    runs = pd.DataFrame([
        _run(1, 4e4, 1e6, 0, 2.00), _run(1, 4e4, 1e6, 1, 2.02), _run(1, 8e4, 1e6, 0, 1.90),
        _run(8, 4e4, 1e6, 0, 1.95), _run(8, 4e4, 1e6, 1, 1.99),
        _run(8, 8e4, 2e6, 0, 1.70),  # no dense run at this D: no twin
        _run(8, 8e4, 1e6, 2, 1.80),  # no dense run of this seed: no twin
        _run(4, 4e4, 1e6, 0, float("nan")),  # not finished: left out
        _run(16, 4e4, 1e6, 0, 1.93, top_k=2, granularity=2.2, nominal_granularity=2.0),
    ])  # fmt: skip
    t = moe_vs_dense(runs)
    assert list(zip(t["E"], t["seed"], strict=True)) == [(8, 0), (8, 1), (16, 0)]
    assert np.allclose(t["moe_minus_dense"], [-0.05, -0.03, -0.07])
    assert list(t["dense_run_id"]) == ["E1-N40000-D1e+06-s0", "E1-N40000-D1e+06-s1", "E1-N40000-D1e+06-s0"]
    assert t["G"].iloc[2] == 2.0 and t["top_k"].iloc[2] == 2  # the nominal granularity, not the realised
    assert np.allclose(t["D_per_total_N"].iloc[0], 1e6 / (4e4 * 8))
    # without nominal columns the realised values match within 2%: 4e4 x 0.998 and 4e4 x 1.003 are twins
    bare = runs.drop(columns=[c for c in runs.columns if c.startswith("nominal_")])
    assert len(moe_vs_dense(bare)) == 3
    assert moe_vs_dense(runs[runs["n_experts"] > 1]).empty  # no dense runs, no twins


def test_the_report_shows_the_twins():
    runs = pd.DataFrame([_run(1, 4e4, 1e6, 0, 2.00), _run(8, 4e4, 1e6, 0, 1.95)])
    table = _twins_table(moe_vs_dense(runs))
    assert list(table["MoE - dense"]) == ["-0.0500"] and list(table["N"]) == ["4e+04"]
    assert _twins_table(moe_vs_dense(runs[runs["n_experts"] == 1])) is None


def test_gap_trend_recovers_a_known_dependence_on_tokens_and_size():
    """Twin gaps drawn from gap = 0.3 - 0.12·log10 D + 0.05·log10 N + noise: the fit finds both slopes
    inside their intervals, the sum's interval excludes 0 (not D/N alone), and the gap it predicts at a
    given (N, D) covers the truth; a gap that depends on D/N alone gives a sum whose interval holds 0."""
    rng = np.random.default_rng(3)
    rows = []
    for n in (4e4, 8e4, 1.6e5, 3.2e5, 8e5):
        for d in (1.1e6, 2.8e6, 7e6):
            for s in (0, 1):
                gap = 0.3 - 0.12 * np.log10(d) + 0.05 * np.log10(n) + 0.005 * rng.normal()
                rows += [_run(1, n, d, s, 2.0), _run(8, n, d, s, 2.0 + gap)]
    t = moe_vs_dense(pd.DataFrame(rows))
    out = gap_trend(t, at=((8e5, 1e7),))
    lo, hi = out["per_decade_D_95"]
    assert lo < -0.12 < hi and hi - lo < 0.05
    lo, hi = out["per_decade_N_95"]
    assert lo < 0.05 < hi
    assert out["sum_95"][1] < 0
    truth = 0.3 - 0.12 * 7 + 0.05 * np.log10(8e5)
    assert out["gap_at"][0]["gap_95"][0] < truth < out["gap_at"][0]["gap_95"][1]
    # the same through D/N alone (the twins' total parameters are 8 N): the sum's interval holds 0
    for r in rows:
        if r["n_experts"] == 8:
            r["loss"] = 2.0 + 0.1 - 0.08 * np.log10(r["tokens"] / r["total_params"]) + 0.005 * rng.normal()
    out = gap_trend(moe_vs_dense(pd.DataFrame(rows)))
    assert out["sum_95"][0] < 0 < out["sum_95"][1]
    lo, hi = out["per_decade_D_per_total_N_95"]
    assert lo < out["per_decade_D_per_total_N"] < hi and hi - lo < 0.02 and out["r2_D_per_total_N"] > 0.9
    assert abs(out["per_decade_D_per_total_N"] + 0.08) < 0.005
    assert abs(np.log10(out["breakeven_D_per_total_N"]) - 0.1 / 0.08) < 0.05  # where 0.1 - 0.08·log10 x = 0
    assert gap_trend(t[t["D"] == 1.1e6]) is None  # one token budget: nothing to separate


def test_the_report_says_how_an_arms_gap_moves_with_tokens_and_size():
    rng = np.random.default_rng(1)
    rows = []
    for n in (4e4, 8e4, 1.6e5):
        for d in (1e6, 3e6):
            gap = 0.4 - 0.1 * np.log10(d) + 0.02 * np.log10(n) + 0.003 * rng.normal()
            rows += [_run(1, n, d, 0, 2.0), _run(8, n, d, 0, 2.0 + gap)]
    notes = _trend_notes(moe_vs_dense(pd.DataFrame(rows)))
    assert len(notes) == 1 and notes[0].startswith("E = 8 top-1, 6 twins (D 1e+06-3e+06, N 4e+04-1.6e+05)")
    assert "-0.1" in notes[0] and "per decade of training tokens" in notes[0]
    assert _trend_notes(moe_vs_dense(pd.DataFrame(rows[:4]))) == []  # 2 twins: no trend
