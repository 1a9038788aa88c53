"""runs.parquet: rows from run folders, atomic rewrites, moelab.results.load over one or many sweeps."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import moelab.results
from moelab.accounting import param_counts, train_flops_per_token
from moelab.errors import MoelabError
from moelab.sweep.spec import SweepSpec
from moelab.sweep.store import COLUMNS, PARQUET, write_table

try:
    from tests._sweep_helpers import fake_training
except ImportError:  # pytest started without the checkout on sys.path
    from _sweep_helpers import fake_training


def make_sweep(root, name, sizes, n_experts=(1, 4)):
    spec = SweepSpec.from_dict(
        {
            "name": name,
            "model": {"vocab_size": 256, "max_seq_len": 64},
            "train": {"seq_len": 32, "batch_size": 4, "checkpoint_every": 5},
            "axes": {"active_params": list(sizes), "n_experts": list(n_experts), "tokens": [1280]},
        }
    )
    trials = spec.trials()
    for t in trials:
        fake_training(t.run, root / name / "runs" / t.run_id)
    return trials


def test_rows_join_config_summary_and_accounting(tmp_path):
    trials = make_sweep(tmp_path, "a", [2e4, 5e4])
    path = write_table(tmp_path / "a")
    frame = pd.read_parquet(path)
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(frame) == len(trials) and frame["run_id"].is_unique
    by_id = frame.set_index("run_id")
    for t in trials:
        row = by_id.loc[t.run_id]
        summary = json.loads((tmp_path / "a" / "runs" / t.run_id / "summary.json").read_text())
        counts = param_counts(t.run.model)
        assert row["sweep"] == "a" and row["status"] == "succeeded"
        assert row["n_experts"] == t.run.model.n_experts and row["d_model"] == t.run.model.d_model
        assert row["active_params"] == counts.active and row["total_params"] == counts.total
        assert row["total_params_with_embedding"] == counts.total_with_embedding
        assert row["flops_per_token"] == pytest.approx(train_flops_per_token(t.run.model, 32))
        assert row["tokens"] == summary["tokens"] and row["flops"] == pytest.approx(summary["flops"])
        assert row["loss"] == pytest.approx(summary["eval_loss"])
        assert row["load_min"] == pytest.approx(1 / t.run.model.n_experts)
        assert row["seq_len"] == 32 and row["batch_size"] == 4 and row["lr"] == pytest.approx(t.run.train.lr)
        assert row["moelab_version"] == "test"
    assert frame["shared_ratio"].dtype == "float64" and str(frame["active_params"].dtype) == "Int64"


def test_load_one_many_and_fallback(tmp_path):
    a = make_sweep(tmp_path, "a", [2e4, 5e4])
    b = make_sweep(tmp_path, "b", [3e4], n_experts=(2,))
    write_table(tmp_path / "a")
    write_table(tmp_path / "b")
    one = moelab.results.load(tmp_path / "a")
    assert len(one) == len(a) and set(one["sweep"]) == {"a"}
    both = moelab.results.load(tmp_path)
    assert len(both) == len(a) + len(b) and set(both["sweep"]) == {"a", "b"}
    listed = moelab.results.load([tmp_path / "a" / PARQUET, str(tmp_path / "b")])
    assert sorted(listed["run_id"]) == sorted(both["run_id"])
    # no table yet (a driver killed before its first write): read from the run folders
    (tmp_path / "b" / PARQUET).unlink()
    again = moelab.results.load(tmp_path / "b")
    assert list(again["run_id"]) == [t.run_id for t in b]
    with pytest.raises(MoelabError, match="holds no sweep"):
        moelab.results.load(tmp_path / "nowhere")


def test_unfinished_runs_have_no_row_and_rewrites_are_atomic(tmp_path, monkeypatch):
    trials = make_sweep(tmp_path, "a", [2e4, 5e4])
    extra = tmp_path / "a" / "runs" / "0123456789ab"
    extra.mkdir()
    (extra / "config.json").write_text(json.dumps(trials[0].run.to_dict()))  # started, no summary yet
    (tmp_path / "a" / "runs" / "not-a-run").mkdir()
    path = write_table(tmp_path / "a")
    good = path.read_bytes()
    assert len(pd.read_parquet(path)) == len(trials)

    def broken(self, target, **kwargs):
        with open(target, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError):
        write_table(tmp_path / "a")
    assert path.read_bytes() == good  # the previous complete table is still there
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["runs", PARQUET]
