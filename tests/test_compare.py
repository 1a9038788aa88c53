"""Published laws beside fitted ones (analysis.compare, ``moelab fit --compare``): published sets evaluated on
the same held-out runs, exponents and allocation exponents side by side with bootstrap intervals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from analysis import datasets
from analysis.compare import default_holdout, exponent_rows, predict_published, published_rows
from analysis.fitting import Bootstrap
from analysis.laws import CHINCHILLA
from analysis.published import PUBLISHED
from analysis.validate import split_by_compute
from moelab.cli import main


def test_predict_published_uses_each_sets_own_e_hat():
    """Ludziejewski et al.'s set with its own E_start, E_max, against the formula written out here."""
    runs = datasets.load("clark-routing")
    pub = PUBLISHED["ludziejewski2025"]
    p, (es, em) = pub.params, pub.e_hat
    N, D = runs["active_params"].to_numpy(float), runs["tokens"].to_numpy(float)
    E = runs["n_experts"].to_numpy(float)
    e_hat = 1 / (1 / (E - 1 + 1 / (1 / es - 1 / em)) + 1 / em)
    lE = np.log(e_hat)
    ref = (
        p["a"] * e_hat ** p["delta"] * N ** (p["alpha"] + p["gamma"] * lE)
        + p["b"] * e_hat ** p["omega"] * D ** (p["beta"] + p["zeta"] * lE)
        + p["c"]
    )
    np.testing.assert_allclose(predict_published(pub, runs), ref, rtol=1e-12)


def test_published_rows_on_the_same_held_out_runs():
    runs = datasets.load("clark-routing")
    kw = default_holdout(runs)  # fixed D: every run at the largest N
    assert kw["threshold"] == pytest.approx(6 * runs["active_params"].max() * 1.31e11)
    _, test = split_by_compute(runs, **kw)
    assert len(test) == 10 and test["active_params"].nunique() == 1
    rows = {r["fit"].split(": ")[1]: r for r in published_rows(runs, test)}
    assert rows["clark2022"]["held_out_mean_abs_rel_error"] < 0.01 and rows["clark2022"]["n_held_out"] == 10
    assert rows["krajewski2024"]["skipped"] == "no column granularity"
    assert "hunyuan2024" not in rows  # an allocation law predicts no loss
    assert default_holdout(datasets.load("epoch-chinchilla")) == {"fraction": 0.2, "threshold": None}


def test_allocation_exponents_with_bootstrap_intervals():
    """N_opt ∝ C^(beta/(alpha+beta)) per bootstrap sample; Hunyuan-Large's 0.5305 beside it."""
    rng = np.random.default_rng(0)
    samples = np.column_stack(
        [np.full(400, 1.8), np.full(400, 400.0), np.full(400, 2000.0), rng.normal(0.34, 0.02, 400),
         rng.normal(0.37, 0.03, 400)]
    )  # fmt: skip
    boot = Bootstrap(names=CHINCHILLA.params, samples=samples)
    res = SimpleNamespace(params=dict(zip(CHINCHILLA.params, samples.mean(0), strict=True)), bootstrap=boot)
    rows = {r["quantity"]: r for r in exponent_rows({"chinchilla": res})}
    n = rows["N_opt ∝ C^n: n"]
    a, b = res.params["alpha"], res.params["beta"]
    assert n["fitted"] == pytest.approx(b / (a + b))
    ref = np.percentile(samples[:, 4] / (samples[:, 3] + samples[:, 4]), [2.5, 97.5])
    np.testing.assert_allclose(n["interval"], ref)
    assert n["published"]["hunyuan2024"] == 0.5305
    assert n["published"]["hoffmann2022"] == pytest.approx(0.28 / 0.62)
    assert rows["alpha"]["published"]["epoch2024"] == 0.3478
    np.testing.assert_allclose(rows["alpha"]["interval"], np.percentile(samples[:, 3], [2.5, 97.5]))


def test_cli_compare_on_a_dataset_json(capsys):
    rc = main(["fit", "--dataset", "clark-routing", "--compare", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    d = json.loads(out)
    fitted = {r["law"]: r for r in d["compare"]}
    assert fitted["clark"]["n_held_out"] == 10 and fitted["clark"]["held_out_mean_abs_rel_error"] < 0.05
    assert "constant" in fitted["chinchilla"]["skipped"]
    assert d["delta"] == 1e3 and d["holdout"]["threshold"] > 1e21
    assert {r["fit"] for r in d["published"]} >= {"published: clark2022", "published: hoffmann2022"}
    ex = {r["quantity"]: r for r in d["exponents"] if r["law"] == "clark"}
    assert ex["c"]["published"] == {"clark2022": 0.009} and ex["c"]["interval"] is None
