"""analysis.twins: each MoE run beside its dense twin (same nominal N, D and seed), and the report's table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.report.build import _twins_table
from analysis.twins import moe_vs_dense


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
    table = _twins_table(runs)
    assert list(table["MoE - dense"]) == ["-0.0500"] and list(table["N"]) == ["4e+04"]
    assert _twins_table(runs[runs["n_experts"] == 1]) is None
