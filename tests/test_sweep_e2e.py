"""End to end with the real trainer (moelab.train.run_training, orbax checkpoints) through Ray: a trial's
worker is killed mid-run, Ray retries it, the retry resumes from the orbax checkpoint, and runs.parquet holds
the real run's row."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import moelab.results
from moelab.sweep.spec import SweepSpec
from moelab.sweep.state import checkpoint_steps, read_summary

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_real_trainer_resumes_after_its_worker_is_killed(tmp_path):
    pytest.importorskip("moelab.train.loop")
    steps, every = 240, 30
    spec = {
        "name": "e2e",
        "model": {"vocab_size": 256, "max_seq_len": 32},
        "train": {
            "seq_len": 32,
            "batch_size": 4,
            "checkpoint_every": every,
            "eval_every": 10**6,
            "eval_tokens": 1024,
            "log_every": 10,
        },
        "axes": {"active_params": [2e4], "n_experts": [4], "tokens": [steps * 32 * 4]},
        "resources": {"cpus": 1},
        "retries": 2,
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(json.dumps(spec))
    (trial,) = SweepSpec.from_file(path).trials()
    run_dir = tmp_path / "r" / "e2e" / "runs" / trial.run_id
    cmd = [
        sys.executable,
        "-m",
        "moelab",
        "sweep",
        "run",
        str(path),
        "--results",
        str(tmp_path / "r"),
        "--no-live",
        "--num-cpus",
        "1",
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (checkpoint_steps(run_dir) and checkpoint_steps(run_dir)[-1] >= every):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        first = json.loads((run_dir / "attempts.jsonl").read_text().splitlines()[0])
        os.kill(first["pid"], signal.SIGKILL)
        killed_at = checkpoint_steps(run_dir)[-1]
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    tries = [json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    if killed_at >= steps:
        pytest.skip("the trial finished before it could be killed (machine too fast for this test's sizes)")
    assert len(tries) == 2 and tries[1]["start_step"] >= every, tries
    summary = read_summary(run_dir)
    assert summary["status"] == "succeeded" and summary["steps"] == steps
    logged = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == steps  # the resume rewrote nothing twice
    frame = moelab.results.load(tmp_path / "r" / "e2e")
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["run_id"] == trial.run_id and row["status"] == "succeeded" and row["n_experts"] == 4
    assert math.isfinite(row["loss"]) and 0 < row["loss"] < math.log(256) + 1
    assert row["jax_version"] and row["corpus_fingerprint"] and row["tokens"] == steps * 32 * 4
