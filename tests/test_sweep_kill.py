"""Kills during a sweep, with the real trainer (moelab.train.run_training, orbax checkpoints) on a real Ray.

One run of a tiny MoE goes through every interruption a user can cause (docs/reliability.md): its Ray
worker SIGKILLed mid-run (Ray retries; the retry resumes from the checkpoint), a second `moelab sweep run` of
the same sweep started meanwhile (refused: it trains nothing), the driver SIGKILLed, the next driver's process
group sent SIGINT as a terminal's Ctrl-C does, and a last driver that finishes. The run must end equal to the
same config trained once without interruption (held-out loss and every logged loss within 1e-6), each step
logged once. Each driver is a `python -m moelab sweep run` subprocess in its own session (its own group).
The trials run ``tests._sweep_helpers:paced_training``: ``run_training`` itself, pausing ``PACE_S`` at each
log line outside the jitted step, so that a kill lands before the run ends (with a warm compilation cache
the 150 steps take about a second, less than Ray needs to reap a dead driver's worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moelab.sweep.spec import SweepSpec
from moelab.sweep.state import checkpoint_steps, read_summary
from moelab.train import run_training
from moelab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 150, 10
PACE_S = 0.25  # per log line: at least 15 x 0.25 s for a whole run
SPEC = {
    "name": "kills",
    "model": {"vocab_size": 256, "max_seq_len": 32},
    "train": {"seq_len": 32, "batch_size": 4, "checkpoint_every": EVERY, "eval_every": 10**6,
              "eval_tokens": 1024, "log_every": EVERY},
    "axes": {"active_params": [2e4], "n_experts": [4], "tokens": [STEPS * 32 * 4]},
    "resources": {"cpus": 1},
    "retries": 2,
}  # fmt: skip


def driver(spec: Path, results: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "moelab", "sweep", "run", str(spec), "--results", str(results), "--no-live",
           "--num-cpus", "1"]  # fmt: skip
    trainer = "tests._sweep_helpers:paced_training"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
           "MOELAB_PACE_S": str(PACE_S), "MOELAB_SWEEP_TRAINER": trainer}  # fmt: skip
    out = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, **out)


def reap(proc: subprocess.Popen) -> None:
    """Kill what is left of a driver's process group (Ray's helpers outlive a SIGKILLed driver)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"driver exited ({proc.returncode}) before {what}: {proc.stdout.read()}")
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def attempts(run_dir: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def latest(run_dir: Path) -> int:
    return (checkpoint_steps(run_dir) or [0])[-1]


@pytest.mark.slow  # real Ray and the real trainer: four driver starts
def test_worker_kill_second_driver_driver_kill_and_ctrl_c_end_equal_to_an_uninterrupted_run(tmp_path):
    spec_path = tmp_path / "kills.yaml"
    spec_path.write_text(json.dumps(SPEC))  # JSON is YAML
    (trial,) = SweepSpec.from_file(spec_path).trials()
    results = tmp_path / "r"
    run_dir = results / "kills" / "runs" / trial.run_id
    ref = run_training(trial.run, tmp_path / "reference", progress=False)  # the same config, uninterrupted

    def status():
        return (read_summary(run_dir) or {}).get("status")

    proc = driver(spec_path, results)
    try:
        # 1. SIGKILL the trial's worker after its first checkpoint: Ray retries, the retry resumes from it
        wait_for(lambda: len(attempts(run_dir)) == 1 and latest(run_dir) >= EVERY, 300, "a checkpoint", proc)
        first = attempts(run_dir)[0]
        os.kill(first["pid"], signal.SIGKILL)
        killed_at = latest(run_dir)
        assert killed_at < STEPS, "the run finished before its worker could be killed"
        retry = wait_for(lambda: attempts(run_dir)[1:], 120, "Ray's retry of the killed trial", proc)[0]
        assert retry["pid"] != first["pid"] and retry["start_step"] >= killed_at > 0

        # 2. a second driver of the same sweep meanwhile: refused at once, nothing started
        cmd = [sys.executable, "-m", "moelab", "sweep", "run", str(spec_path), "--results", str(results)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "in use by another `moelab sweep run`" in second.stderr.strip().splitlines()[-1], second.stderr
        assert len(attempts(run_dir)) == 2

        # 3. SIGKILL the driver once the retry has saved a checkpoint of its own: its worker dies with it
        wait_for(lambda: latest(run_dir) > retry["start_step"], 120, "a checkpoint of the retry", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not alive(retry["pid"]), 30, "the dead driver's worker to exit")
    finally:
        reap(proc)
    assert status() == "running" and latest(run_dir) < STEPS

    # 4. Ctrl-C as a terminal sends it: SIGINT to the driver's whole process group (Ray's helpers included)
    t_restart = time.time()
    proc = driver(spec_path, results)
    try:
        resumed = wait_for(
            lambda: [a for a in attempts(run_dir) if a["time"] >= t_restart], 120, "the restarted trial", proc
        )[0]
        assert resumed["start_step"] == latest(run_dir) > 0
        wait_for(lambda: latest(run_dir) > resumed["start_step"], 120, "progress after the restart", proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        reap(proc)
    assert proc.returncode == 130, out
    assert "resume" in out.strip().splitlines()[-1], out
    assert status() == "running", read_summary(run_dir)  # interrupted, not failed

    # 5. the next driver finishes the run
    proc = driver(spec_path, results)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        reap(proc)
    assert proc.returncode == 0, out
    s = read_summary(run_dir)
    assert s["status"] == "succeeded" and s["steps"] == STEPS and s["resumed_from"] > 0
    assert abs(s["eval_loss"] - ref["eval_loss"]) < 1e-6
    rows = read_metrics(run_dir / "metrics.jsonl")
    want = read_metrics(tmp_path / "reference" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in want] == list(range(EVERY, STEPS + 1, EVERY))
    assert all(abs(a["loss"] - b["loss"]) < 1e-6 for a, b in zip(rows, want, strict=True))
    # nothing trained twice from scratch: every attempt after the first resumed from the latest checkpoint
    tries = attempts(run_dir)
    assert len(tries) == 4 and tries[0]["start_step"] == 0 and all(a["start_step"] > 0 for a in tries[1:])
    assert [a["start_step"] for a in tries] == sorted(a["start_step"] for a in tries)
