"""The Ray scheduler in-process on one shared local Ray instance: failures, held runs, --rerun-failed,
divergence, per-trial thread limits and max_concurrency (the stand-in trainer of tests/_sweep_helpers.py)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

import moelab.results
from moelab.cli import main
from moelab.sweep.scheduler import run_sweep
from moelab.sweep.spec import SweepSpec
from moelab.sweep.state import read_summary

TRAINER = "tests._sweep_helpers:fake_training"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    import ray

    os.environ["MOELAB_FAKE_STEP_S"] = "0.01"
    # the workers import tests._sweep_helpers: put the checkout on their path whatever the working directory
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
    )
    yield ray
    ray.shutdown()
    os.environ.pop("MOELAB_FAKE_STEP_S", None)


def spec(name, seeds=(0,), lr=3e-3, sizes=(2e4,), conc=2, cpus=1):
    return SweepSpec.from_dict(
        {
            "name": name,
            "model": {"vocab_size": 256, "max_seq_len": 64},
            "train": {"seq_len": 32, "batch_size": 4, "checkpoint_every": 5, "lr": lr},
            "axes": {"active_params": list(sizes), "tokens": [20 * 32 * 4]},
            "seeds": list(seeds),
            "resources": {"cpus": cpus},
            "max_concurrency": conc,
            "retries": 1,
        }
    )


def folders(root, s):
    return {t.point.get("seed", 0): root / s.name / "runs" / t.run_id for t in s.trials()}


def test_failed_runs_are_recorded_held_and_rerun_only_when_asked(tmp_path, capsys):
    s = spec("fails", seeds=(0, 13))
    out = run_sweep(s, tmp_path, trainer=TRAINER, live=False)
    assert (out["succeeded"], out["failed"]) == (1, 1)
    runs = folders(tmp_path, s)
    failed = read_summary(runs[13])
    assert failed["status"] == "failed" and "injected failure for seed 13" in failed["error"]
    assert "RuntimeError" in (runs[13] / "trial.log").read_text()
    table = moelab.results.load(tmp_path / "fails").set_index("run_id")
    assert table.loc[runs[13].name, "status"] == "failed" and "injected" in table.loc[runs[13].name, "error"]

    capsys.readouterr()
    assert main(["sweep", "status", "fails", "--results", str(tmp_path)]) == 0
    shown = capsys.readouterr()
    assert runs[0].name in shown.out and runs[13].name in shown.out and "failed 1, succeeded 1" in shown.out
    assert f"{runs[13].name} failed: RuntimeError: injected failure" in shown.err
    assert main(["sweep", "status", "nope", "--results", str(tmp_path)]) == 2

    stamp = {p: p.stat().st_mtime_ns for p in runs[13].rglob("*")}
    again = run_sweep(s, tmp_path, trainer=TRAINER, live=False)
    assert (again["trained"], again["held"], again["skipped"]) == (0, 1, 1)
    assert {p: p.stat().st_mtime_ns for p in runs[13].rglob("*")} == stamp  # held: untouched

    rerun = run_sweep(s, tmp_path, trainer=TRAINER, live=False, rerun_failed=True)
    assert (rerun["trained"], rerun["failed"], rerun["skipped"]) == (1, 1, 1)
    kept = list((tmp_path / "fails" / "failed").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith(runs[13].name)  # the old folder is kept aside
    assert len((runs[13] / "attempts.jsonl").read_text().splitlines()) == 1  # a fresh folder


def test_divergence_is_a_result_not_a_retry(tmp_path):
    s = spec("div", lr=1.0)
    out = run_sweep(s, tmp_path, trainer=TRAINER, live=False)
    assert out["diverged"] == 1
    (run,) = folders(tmp_path, s).values()
    assert len((run / "attempts.jsonl").read_text().splitlines()) == 1
    row = moelab.results.load(tmp_path / "div").iloc[0]
    assert row["status"] == "diverged" and row["diverged_step"] == 2


def test_threads_follow_the_trial_cpus_and_concurrency_is_capped(tmp_path):
    from rich.console import Console

    s = spec("conc", sizes=(2e4, 3e4, 4e4), conc=1)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=140)
    out = run_sweep(s, tmp_path, trainer=TRAINER, console=console, live=True)
    assert out["succeeded"] == 3 and out["concurrency"] == 1
    shown = screen.getvalue()
    assert "sweep conc: done 3/3 running 0 failed 0" in shown and "ETA 0s" in shown  # the last frame
    spans = []
    for t in s.trials():
        d = tmp_path / "conc" / "runs" / t.run_id
        summary = read_summary(d)
        assert summary["threads"] == {"PJRT_NPROC": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        start = json.loads((d / "attempts.jsonl").read_text().splitlines()[0])["time"]
        spans.append((start, (d / "summary.json").stat().st_mtime))
    spans.sort()
    assert all(nxt[0] >= prev[1] - 1e-3 for prev, nxt in zip(spans, spans[1:], strict=False))  # one at a time


def test_runs_table_carries_each_axis_nominal_value(tmp_path):
    """The requested axis values reach runs.parquet as nominal_<axis> (the realised ones are rounded by the
    family rule), also for a finished run whose folder predates axes.json."""
    import pandas as pd

    from analysis.domain import n_levels

    s = spec("nominal", sizes=(2e4, 3e4))
    run_sweep(s, tmp_path, trainer=TRAINER, live=False)
    runs = {t.point["active_params"]: tmp_path / s.name / "runs" / t.run_id for t in s.trials()}
    df = pd.read_parquet(tmp_path / "nominal" / "runs.parquet")
    assert sorted(df["nominal_active_params"]) == [2e4, 3e4] and (df["nominal_tokens"] == 20 * 32 * 4).all()
    assert not set(df["active_params"]) & {20000, 30000}  # realised sizes differ from the requested ones
    assert "nominal_seed" not in df and n_levels(df, "active_params") == 2
    (runs[2e4] / "axes.json").unlink()
    assert run_sweep(s, tmp_path, trainer=TRAINER, live=False)["skipped"] == 2
    assert json.loads((runs[2e4] / "axes.json").read_text())["active_params"] == 2e4
