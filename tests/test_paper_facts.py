"""A paper preset's facts (training tokens, compute model, allocation law) have one home, the preset, and
every comparison evaluates the paper's allocation law at the paper's own compute model (issue 12)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from _report_helpers import synthetic_results

from analysis.extrapolate import extrapolate, paper_allocation
from analysis.fit import fit
from analysis.frontier import cost_per_token
from analysis.load import load_runs
from moelab.errors import ConfigError, MoelabError
from moelab.presets import paper_facts

REPO_DIRS = ("moelab", "analysis", "notebooks", "sweeps", "scripts")
# Hunyuan-Large's numbers as they would be typed: 9.59, 2.3e8, 7e12, 5.9e-3, 0.5305
CONSTANTS = re.compile(r"9\.59|2\.3e\+?0?8|7(\.0*)?e\+?12|5\.9e-0?3|0\.5305")


def test_hunyuan_facts_live_on_the_preset():
    f = paper_facts("hunyuan-large")
    # Tencent 2024 (arXiv 2411.02265, sec. 4.1), as collected in LAWS.md
    assert (f.train_tokens, f.compute_coef, f.compute_per_token) == (7e12, 9.59, 2.3e8)
    assert f.n_opt == (5.9e-3, 0.5305) and f.d_opt == (3.2, 0.50)
    assert f.compute(1e9, 1e10) == pytest.approx((9.59 * 1e9 + 2.3e8) * 1e10)
    with pytest.raises(ConfigError, match="no paper facts"):
        paper_facts("dense-1m")
    with pytest.raises(ConfigError, match="unknown preset"):
        paper_facts("nope")


def test_the_papers_optimum_is_the_fixed_point_of_its_law_at_its_compute_model():
    """The paper quotes 58.1B activated / 5.6T tokens as its law's optimum: evaluated at the paper's compute
    of that pair, the law returns the pair (within 1%); evaluated at C = 6ND, as the report once did, it
    misses N_opt by more than 20%."""
    got = paper_allocation("hunyuan-large", 58.1e9, 5.6e12)
    assert got["N_opt"] == pytest.approx(58.1e9, rel=0.01) and got["D_opt"] == pytest.approx(5.6e12, rel=0.01)
    at_6nd = paper_allocation("hunyuan-large", compute=6 * 58.1e9 * 5.6e12)
    assert at_6nd["N_opt"] < 0.8 * 58.1e9
    # the frontier's named compute model is the same one
    n = np.array([1e8, 5e10])
    want = paper_facts("hunyuan-large").cost_per_token(n)
    np.testing.assert_allclose(cost_per_token(n, "hunyuan-large"), want)
    np.testing.assert_allclose(cost_per_token(n, "hunyuan"), cost_per_token(n, "hunyuan-large"))
    with pytest.raises(MoelabError, match="unknown compute model"):
        cost_per_token(n, "chinchilla")


def test_the_constants_are_written_once():
    hits = []
    for d in REPO_DIRS:
        root = Path(__file__).resolve().parents[1] / d
        for path in root.rglob("*"):
            if path.suffix in (".py", ".yaml", ".ipynb") and path.is_file():
                for i, line in enumerate(path.read_text().splitlines(), 1):
                    if CONSTANTS.search(line):
                        hits.append(f"{path.relative_to(root.parent)}:{i}")
    assert hits and all(h.startswith("moelab/presets.py:") for h in hits), hits


def test_extrapolation_and_report_use_one_allocation(tmp_path_factory):
    """``extrapolate`` and the report's extrapolation section give the same paper allocation, at the paper's
    compute model, and the report's far frontier draws the paper's law from the same function."""
    from analysis.report.data import load_results
    from analysis.report.fits import analyse

    root = synthetic_results(tmp_path_factory)
    runs = load_runs(root, succeeded_only=False).query("status == 'succeeded'")
    res = fit(runs, "chinchilla", max_starts=16)
    ex = extrapolate(res, "hunyuan-large")
    n = ex["active_params"]
    assert ex["tokens"] == paper_facts("hunyuan-large").train_tokens
    assert ex["compute_paper"] == pytest.approx(paper_facts("hunyuan-large").compute(n, ex["tokens"]))
    want = paper_allocation("hunyuan-large", n, ex["tokens"])
    assert ex["paper_law"]["N_opt"] == pytest.approx(float(want["N_opt"]))
    an = analyse(load_results(root), n_boot=0, max_starts=16, laws=["chinchilla"])
    rex = an.extrapolation["analysis"]
    assert rex["paper_law"] == ex["paper_law"] and rex["compute_paper"] == ex["compute_paper"]
    far = an.frontier_far
    paper = paper_facts("hunyuan-large").allocation(far["C"].to_numpy())
    np.testing.assert_allclose(far["paper_N_opt"], paper[0])
    np.testing.assert_allclose(far["paper_D_opt"], paper[1])
    assert an.extrapolation["flops"] == ex["compute_paper"]
