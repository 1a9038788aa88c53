"""Bundled datasets (analysis.datasets, ``moelab datasets``) and any table through ``--col``, ``--const``,
``--where``, ``--final-by``: the files are the published ones, unchanged; the loader against plain pandas;
bad maps and filters -> one line, exit 2; ``--dataset`` and ``--csv`` give the same fit."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis import datasets
from moelab.cli import main
from moelab.errors import MoelabError


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", datasets.names())
def test_shipped_files_are_the_published_ones_unchanged(name):
    d = datasets.get(name)
    source = (d.path.parent / "SOURCE.md").read_text()
    sha = re.search(r"sha256 ([0-9a-f]{64})", source).group(1)
    assert hashlib.sha256(d.path.read_bytes()).hexdigest() == sha
    assert d.path.stat().st_size < 2_000_000  # the package stays small
    for word in ("License", "Citation", "https://github.com/"):
        assert word in source
    assert d.spdx in ("CC-BY-4.0",)


def test_the_papers_selections():
    epoch = datasets.load("epoch-chinchilla")
    assert len(epoch) == 240 and epoch["n_experts"].eq(1).all()  # 245 extracted, 5 highest losses dropped
    raw = pd.read_csv(datasets.get("epoch-chinchilla").path)
    assert epoch["loss"].max() < raw["loss"].nlargest(5).min()
    np.testing.assert_allclose(epoch["tokens"], epoch["flops"] / (6 * epoch["active_params"]))

    clark = datasets.load("clark-routing")
    assert len(clark) == 58 and clark["run_id"].is_unique
    assert sorted(clark["n_experts"].unique()) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert (clark["tokens"] == 1.31e11).all() and clark["top_k"].eq(1).all()
    everything = datasets.load("clark-routing", where=None)
    assert len(everything) == 223  # every run's final step


def test_final_by_step_col_against_groupby(tmp_path):
    """The last logged row per run equals pandas' sort + groupby().last() on a shuffled table of curves."""
    rng = np.random.default_rng(0)
    rows = [
        {"run": r, "step": s, "N": 1e6 * (r + 1), "E": 2 ** (r % 4), "L": 5 - 0.1 * s - 0.01 * r, "arch": "x"}
        for r in range(12)
        for s in range(int(rng.integers(2, 7)))
    ]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    csv = tmp_path / "curves.csv"
    df.to_csv(csv, index=False)
    got = analysis.load_runs(
        csv,
        columns={"active_params": "N", "n_experts": "E", "loss": "L"},
        consts={"tokens": 1e9},
        where="E >= 2 and arch == 'x'",
        final_by="run",
        step_col="step",
    )
    ref = df[df["E"] >= 2].sort_values("step").groupby("run").last()
    assert len(got) == len(ref) == 9
    got = got.set_index(got["run_id"].str.split("-").str[-1].astype(int)).sort_index()
    np.testing.assert_array_equal(got["loss"], ref["L"].sort_index())
    assert (got["tokens"] == 1e9).all()


def test_cli_bad_maps_and_filters_exit_2_with_one_line(tmp_path, capsys):
    csv = tmp_path / "runs.csv"
    pd.DataFrame({"N": [1e6, 2e6, 4e6], "D": [1e9, 1e9, 2e9], "L": [4.0, 3.8, 3.5], "s": [1, 1, 2]}).to_csv(
        csv, index=False
    )
    base = ["fit", "--csv", csv, "--col", "active_params=N", "--col", "loss=L"]
    cases = [
        ([*base, "--col", "tokenz=D"], "--col tokenz: unknown field; allowed:"),
        ([*base, "--col", "tokens"], "expected FIELD=VALUE"),
        ([*base, "--col", "tokens=D", "--col", "tokens=N"], "--col tokens given twice"),
        ([*base, "--col", "tokens=DD"], "no column 'DD'"),
        ([*base, "--const", "tokens=lots"], "--const tokens='lots': not a number"),
        ([*base, "--col", "tokens=D", "--const", "tokens=1e9"], "both as a column (--col) and a constant"),
        ([*base, "--n-col", "N", "--col", "tokens=D"], "--n-col and --col active_params=... both map"),
        (["fit", "--csv", csv, "--col", "loss=L", "--const", "tokens=9"], "--csv needs --col active_params"),
        ([*base], "--csv needs tokens (--col tokens=COLUMN, --const tokens=VALUE or --col flops=COLUMN)"),
        ([*base, "--col", "tokens=D", "--where", "s = 1"], "--where 's = 1': not an expression"),
        ([*base, "--col", "tokens=D", "--where", "open('x') == 1"], "is not allowed"),
        ([*base, "--col", "tokens=D", "--final-by", "run"], "--final-by run: no such column"),
        ([*base, "--col", "tokens=D", "--step-col", "s"], "--step-col needs --final-by"),
        (["fit", "--dataset", "nope"], "unknown dataset 'nope'; choose one of epoch-chinchilla"),
        (["fit", "--dataset", "clark-routing", "--col", "loss=x"], "--col applies to --csv FILE only"),
        (["fit", "--dataset", "clark-routing", "--csv", csv], "give one of RESULTS paths, --csv FILE or"),
        (["fit", "--dataset", "clark-routing", "--where", "num_experts > 1e6"], "keeps none of the"),
        (["datasets", "info", "nope"], "unknown dataset 'nope'"),
    ]
    for argv, msg in cases:
        rc, out, err = _run(capsys, *argv)
        assert rc == 2, (argv, out, err)
        assert len(err.strip().splitlines()) == 1, err
        assert msg in err, (msg, err)


def test_cli_datasets_list_and_info(capsys):
    rc, out, _ = _run(capsys, "datasets")
    assert rc == 0 and "epoch-chinchilla" in out and "clark-routing" in out
    rc, out, _ = _run(capsys, "datasets", "info", "clark-routing")
    assert rc == 0
    for needle in ("license     CC BY 4.0", "arXiv:2202.01169", "google-deepmind/scaling_laws_for_routing",
                   "n_experts=num_experts", "where       router_type in", "published set 'clark2022'"):
        assert needle in out, needle  # fmt: skip


def test_dataset_and_csv_with_column_maps_give_identical_parameters(capsys):
    """Acceptance: ``--dataset clark-routing --law clark --json`` and the same via ``--csv`` and ``--col``."""
    d = datasets.get("clark-routing")
    rc, out, err = _run(capsys, "fit", "--dataset", d.name, "--json")  # the paper's law by default
    assert rc == 0, err
    by_name = json.loads(out)
    cols = [x for k, v in d.columns.items() for x in ("--col", f"{k}={v}")]
    argv = ["fit", "--csv", d.path, "--law", "clark", *cols, "--const", "tokens=1.31e11", "--where", d.where,
            "--final-by", "hyper_id", "--step-col", "step", "--delta", "1e3", "--json"]  # fmt: skip
    rc, out, err = _run(capsys, *argv)
    assert rc == 0, err
    by_csv = json.loads(out)
    assert by_name["params"] == by_csv["params"] and by_name["n_points"] == by_csv["n_points"] == 58
    assert by_name["delta"] == by_csv["delta"] == 1e3 and by_name["law"] == "clark"


def test_load_runs_errors_name_the_field():
    with pytest.raises(MoelabError, match="--const run_id"):
        analysis.load_runs(datasets.get("clark-routing").path, columns={"loss": "loss_validation"},
                           consts={"run_id": 1})  # fmt: skip
    with pytest.raises(MoelabError, match=r"column 'router_type' \(mapped to n_experts\) has non-numeric"):
        analysis.load_runs(
            datasets.get("clark-routing").path,
            columns={"loss": "loss_validation", "active_params": "dense_parameter_count",
                     "n_experts": "router_type"},
            consts={"tokens": 1e9},
        )  # fmt: skip
