"""``moelab fit`` and ``analysis.load_runs``: results folders, CSVs, JSON, bad input -> one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _analysis_helpers import CHIN_TRUE, chinchilla_runs

import analysis
from analysis import datasets
from analysis.fitting import FitWarning, prepare
from analysis.laws import get_law
from moelab.cli import main
from moelab.errors import MoelabError
from moelab.presets import paper_facts


def _sweep(root, name, df):
    d = root / name
    d.mkdir(parents=True)
    df = df.assign(sweep=name, status="succeeded")
    df.to_parquet(d / "runs.parquet")
    return d


def test_load_runs_sweep_folder_results_root_and_file(tmp_path):
    df = chinchilla_runs()
    a = _sweep(tmp_path, "a", df.iloc[:30])
    _sweep(tmp_path, "b", df.iloc[30:])
    assert len(analysis.load_runs(a)) == 30
    assert len(analysis.load_runs(a / "runs.parquet")) == 30
    both = analysis.load_runs(tmp_path)
    assert len(both) == 48 and set(both["sweep"]) == {"a", "b"}
    assert len(analysis.load_runs([a, tmp_path / "b"])) == 48


def test_load_runs_drops_unfinished_runs_with_a_count(tmp_path):
    df = chinchilla_runs().assign(status="succeeded")
    df.loc[:2, "status"] = "diverged"
    df.loc[:2, "loss"] = np.nan
    (tmp_path / "s").mkdir()
    df.to_parquet(tmp_path / "s" / "runs.parquet")
    with pytest.warns(UserWarning, match="dropped 3 run"):
        assert len(analysis.load_runs(tmp_path / "s")) == 45


def test_load_runs_errors_are_one_line(tmp_path):
    with pytest.raises(MoelabError, match="no such file"):
        analysis.load_runs(tmp_path / "nope")
    with pytest.raises(MoelabError, match="no runs.parquet"):
        analysis.load_runs(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    chinchilla_runs().drop(columns=["tokens"]).to_parquet(bad / "runs.parquet")
    with pytest.raises(MoelabError, match="missing column.*tokens"):
        analysis.load_runs(bad)
    csv = tmp_path / "x.csv"
    chinchilla_runs().to_csv(csv, index=False)
    with pytest.raises(MoelabError, match="column mapping"):
        analysis.load_runs(csv)
    with pytest.raises(MoelabError, match="no column 'N'"):
        analysis.load_runs(csv, columns={"active_params": "N", "loss": "loss", "tokens": "tokens"})


def test_prepare_rejects_bad_input_and_drops_nan_losses():
    law = get_law("chinchilla")
    df = chinchilla_runs()
    with pytest.raises(MoelabError, match="at least 6 runs; got 5"):
        prepare(df.iloc[::10], law)
    with pytest.raises(MoelabError, match="column tokens is constant"):
        prepare(df.assign(tokens=1e10), law)
    with pytest.raises(MoelabError, match="needs column.*n_experts"):
        prepare(df, get_law("clark"))
    with pytest.raises(MoelabError, match="unknown law 'nope'"):
        get_law("nope")
    nan = df.copy()
    nan.loc[[0, 5, 9], "loss"] = np.nan
    with pytest.warns(FitWarning, match="dropped 3 run"):
        data = prepare(nan, law)
    assert len(data) == 45 and data.n_dropped == 3


def _run(capsys, *argv):
    try:
        rc = main(["fit", *map(str, argv)])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_results_dir_json_with_holdout_and_extrapolation(tmp_path, capsys):
    train = chinchilla_runs(noise=0.01, seed=1)
    top = chinchilla_runs(noise=0.01, seed=2).nlargest(12, "flops")
    top["tokens"] *= 10  # 12 runs beyond the training compute
    top["flops"] *= 10
    top["loss"] = analysis.get_law("chinchilla").predict(CHIN_TRUE, top)
    _sweep(tmp_path, "s", pd.concat([train, top], ignore_index=True))
    rc, out, err = _run(capsys, tmp_path, "--holdout", 0.2, "--bootstrap", 64, "--extrapolate", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert set(d) >= {"law", "params", "stderr", "intervals", "n_points", "holdout", "extrapolation"}
    assert set(d["params"]) == {"E", "A", "B", "alpha", "beta"} and d["n_points"] == 48
    assert d["holdout"]["n_held_out"] == 12 and len(d["holdout"]["runs"]) == 12
    assert d["extrapolation"]["preset"] == "hunyuan-large"
    assert d["extrapolation"]["tokens"] == paper_facts("hunyuan-large").train_tokens  # the preset's default
    assert d["holdout"]["mean_abs_rel_error"] < 0.03
    argv = ["--holdout", 0.2, "--extrapolate", "hunyuan-large", "--tokens", 2e12]
    rc, out, err = _run(capsys, tmp_path, *argv)
    assert rc == 0 and "D = 2e+12 tokens" in out and "the paper's law at that C" in out and "tokenizer" in out


def test_cli_csv_bad_input_exits_2_with_one_line(tmp_path, capsys):
    csv = tmp_path / "runs.csv"
    df = chinchilla_runs().rename(columns={"active_params": "N", "tokens": "D", "loss": "L"})
    df.to_csv(csv, index=False)
    base = ["--csv", csv, "--n-col", "N", "--loss-col", "L"]
    cases = [
        ([*base, "--d-col", "DD"], "no column 'DD'"),
        (["--csv", csv, "--loss-col", "L", "--d-col", "D"], "--csv needs --col active_params=COLUMN"),
        ([*base, "--d-col", "D", "--law", "nope"], "invalid choice"),
        ([*base, "--d-col", "D", "--drop-highest-loss", 43], None),  # 5 points left for 5 parameters
        ([*base, "--d-col", "D", "--law", "clark"], "n_experts is constant"),
    ]
    for argv, msg in cases:
        rc, out, err = _run(capsys, *argv)
        assert rc == 2, (argv, out, err)
        assert len(err.strip().splitlines()) == 1, err
        assert msg is None or msg in err, err
    const = tmp_path / "const.csv"
    df.assign(D=1e10).to_csv(const, index=False)
    rc, _, err = _run(capsys, "--csv", const, "--n-col", "N", "--loss-col", "L", "--d-col", "D")
    assert rc == 2 and "constant" in err


def test_cli_epoch_csv_with_nan_losses(tmp_path, capsys):
    """The acceptance data through the CLI, with 3 NaN losses added: dropped with a count, same fit."""
    src = pd.read_csv(datasets.get("epoch-chinchilla").path)
    extra = src.iloc[:3].assign(loss=np.nan)
    csv = tmp_path / "epoch.csv"
    pd.concat([src, extra]).to_csv(csv, index=False)
    rc, out, err = _run(
        capsys, "--csv", csv, "--law", "chinchilla", "--n-col", "Model Size", "--loss-col", "loss",
        "--c-col", "Training FLOP", "--drop-highest-loss", 5, "--json",
    )  # fmt: skip
    assert rc == 0, err
    assert "dropped 3 run(s) with a NaN" in err and len(err.strip().splitlines()) == 1
    d = json.loads(out)
    assert d["n_points"] == 240 and d["params"]["E"] == pytest.approx(1.8172, rel=0.01)
    assert d["params"]["B"] == pytest.approx(2143.86, rel=0.01)
