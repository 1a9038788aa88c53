"""``moelab bench laws``: the law x dataset table of held-out errors, with the paper's published law as the
baseline row (the speed target, <= 2 minutes on 2 cores, is measured by the bench itself, not here)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import datasets
from analysis.bench_laws import BASELINE, format_table, run_laws_bench
from analysis.compare import default_holdout, predict_published
from analysis.laws import CLARK
from analysis.published import PUBLISHED
from analysis.validate import split_by_compute
from moelab.cli import main


def test_bench_laws_cells_and_baseline_on_clark(tmp_path, capsys):
    out = tmp_path / "laws.json"
    argv = ["bench", "laws", "--dataset", "clark-routing", "--laws", "clark,chinchilla", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    cells = {c["law"]: c for c in res["cells"]}
    assert set(cells) == {BASELINE, "clark", "chinchilla"}
    assert "constant" in cells["chinchilla"]["skipped"]
    assert res["datasets"][0]["holdout"] == "largest N" and res["datasets"][0]["n_held_out"] == 10
    # the baseline cell is the published S-BASE law on the held-out runs, recomputed here
    runs = datasets.load("clark-routing")
    _, test = split_by_compute(runs, **default_holdout(runs))
    pred = predict_published(PUBLISHED["clark2022"], test)
    obs = test["loss"].to_numpy()
    assert cells[BASELINE]["rmse"] == pytest.approx(np.sqrt(np.mean((pred - obs) ** 2)))
    assert cells[BASELINE]["median_abs_rel_error"] == pytest.approx(np.median(np.abs(pred / obs - 1)))
    assert 0 < cells["clark"]["median_abs_rel_error"] < 0.05
    assert "| paper's law, published | " in text and "(clark2022)" in text and "| chinchilla | n/a |" in text
    assert format_table(res).splitlines()[0] == "| law | clark-routing |"


def test_bench_laws_bad_input_is_one_line(capsys):
    for argv, msg in (
        (["bench", "laws", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["bench", "laws", "--laws", "clark,nope"], "unknown law 'nope'"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1


def test_run_laws_bench_on_a_results_folder(tmp_path):
    """A results folder is a column of the table (top 20% by compute held out); it has no baseline row.
    60 runs, so the 48 fitted pad to the same compiled shape as clark-routing's held-out fit."""
    rng = np.random.default_rng(0)
    N = np.repeat(np.geomspace(1e7, 1e9, 6), 10)
    E = np.tile(2 ** np.arange(10), 6)
    D = np.exp(rng.uniform(np.log(1e9), np.log(1e11), N.size))
    df = pd.DataFrame(
        {"active_params": N, "n_experts": E, "tokens": D, "run_id": [f"r{i}" for i in range(60)]}
    )
    df["loss"] = CLARK.predict(PUBLISHED["clark2022"].params, df) * np.exp(0.003 * rng.normal(size=60))
    (tmp_path / "toy").mkdir()
    df.assign(status="succeeded").to_parquet(tmp_path / "toy" / "runs.parquet")
    res = run_laws_bench(datasets=[], results=[tmp_path / "toy"], laws=["clark"])
    (cell,) = res["cells"]
    assert cell["dataset"] == "toy" and cell["median_abs_rel_error"] < 0.02
    # the top 20% of each stratum: 11 of the 54 MoE runs; the 6 dense runs all stay (validate.MIN_KEEP)
    assert res["datasets"][0]["holdout"] == "top 20% compute" and res["datasets"][0]["n_held_out"] == 11
