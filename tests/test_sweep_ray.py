"""Reliability of Ray-scheduled sweeps (issue 5's acceptance), with real Ray and real driver processes.

The trainer is the stand-in of tests/_sweep_helpers.py (the run-folder contract of moelab.train, without JAX,
with a controllable step time) so kills land mid-run deterministically; test_sweep_e2e.py runs the real one.
Each driver is a `python -m moelab sweep run` subprocess in its own session, so killing it is a real crash.
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
from moelab.sweep.state import read_summary

REPO = Path(__file__).resolve().parents[1]
TRAINER = "tests._sweep_helpers:fake_training"


def write_spec(tmp_path: Path, name: str, n_models: int, steps: int, concurrency: int) -> Path:
    sizes = [2e4, 3e4, 4e4, 5e4, 6e4, 7e4][:n_models]
    spec = {
        "name": name,
        "model": {"vocab_size": 256, "max_seq_len": 64},
        "train": {"seq_len": 32, "batch_size": 4, "checkpoint_every": 5},
        "axes": {"active_params": sizes, "tokens": [steps * 32 * 4]},
        "resources": {"cpus": 1},
        "max_concurrency": concurrency,
        "retries": 2,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def start_driver(spec: Path, results: Path, step_s: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "MOELAB_SWEEP_TRAINER": TRAINER,
        "MOELAB_FAKE_STEP_S": str(step_s),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(REPO),
    }
    cmd = [
        sys.executable,
        "-m",
        "moelab",
        "sweep",
        "run",
        str(spec),
        "--results",
        str(results),
        "--no-live",
        "--num-cpus",
        "2",
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        reap(proc)
    return out


def reap(proc: subprocess.Popen) -> None:
    """Kill what is left of a driver's process group (Ray's agents outlive a SIGKILLed driver)."""
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
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def attempts(run_dir: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    except OSError:
        return []


def ckpt_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def logged_steps(run_dir: Path) -> list[int]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m["step"] for m in lines if "loss" in m]


def check_table(results: Path, name: str, n: int):
    import moelab.results

    frame = moelab.results.load(results / name)
    assert len(frame) == n and frame["run_id"].is_unique
    assert set(frame["status"]) == {"succeeded"}
    assert frame["loss"].notna().all()
    return frame


def test_killed_worker_killed_driver_ctrl_c_and_rerun(tmp_path):
    """One sweep through every failure the issue names (one Ray start per driver, so they share drivers)."""
    steps = 50
    spec_path = write_spec(tmp_path, "dk", n_models=4, steps=steps, concurrency=2)
    results = tmp_path / "r"
    runs = [results / "dk" / "runs" / t.run_id for t in SweepSpec.from_file(spec_path).trials()]

    def status(d):
        return (read_summary(d) or {}).get("status")

    def snapshot(dirs):
        return {p: p.stat().st_mtime_ns for d in dirs for p in d.rglob("*")}

    def crash_point():  # one run finished and another one past a checkpoint
        done = [d for d in runs if status(d) == "succeeded"]
        busy = [d for d in runs if status(d) == "running" and 0 < (ckpt_steps(d) or [99])[-1] <= 15]
        return (done, busy) if done and busy else None

    def victim():  # a run past its checkpoint at step 10, on its first attempt
        return next((d for d in runs if len(attempts(d)) == 1 and (ckpt_steps(d) or [0])[-1] >= 10), None)

    proc = start_driver(spec_path, results, step_s=0.08)
    try:
        # 1. SIGKILL a trial's worker: Ray retries the task and the retry resumes from the checkpoint.
        hit = wait_for(victim, 60, "a checkpoint at step 10", proc)
        first = attempts(hit)[0]
        os.kill(first["pid"], signal.SIGKILL)
        retry = wait_for(lambda: attempts(hit)[1:], 30, "Ray's retry of the killed trial", proc)[0]
        assert retry["pid"] != first["pid"] and retry["start_step"] >= 10

        # 2. SIGKILL the driver mid-sweep: its workers die with it; finished runs stay finished.
        done, busy = wait_for(crash_point, 60, "a finished run and a checkpointed one", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        pids = [a["pid"] for d in busy for a in attempts(d)]
        t_kill = time.monotonic()
        wait_for(lambda: not any(alive(p) for p in pids), 30, "the dead driver's workers to exit")
        print(f"workers exited {time.monotonic() - t_kill:.1f}s after the driver was killed")
    finally:
        reap(proc)
    finished_1 = [d for d in runs if status(d) == "succeeded"]
    ckpt_1 = {d: (ckpt_steps(d) or [0])[-1] for d in runs}  # where each run must pick up next time
    before = snapshot(finished_1)

    # 3. Ctrl-C (SIGINT) the next driver: it stops cleanly, nothing is marked failed.
    t_restart = time.time()

    def progressed():  # a run this driver started has passed a new checkpoint
        for d in runs:
            tries = [x for x in attempts(d) if x["time"] >= t_restart]
            if (
                tries
                and status(d) == "running"
                and ckpt_steps(d)
                and ckpt_steps(d)[-1] > tries[-1]["start_step"]
            ):
                return d
        return None

    proc = start_driver(spec_path, results, step_s=0.08)
    try:
        wait_for(progressed, 60, "progress after the restart", proc)
        os.kill(proc.pid, signal.SIGINT)
        out = finish(proc, timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 130, out
    assert "resume" in out.strip().splitlines()[-1], out
    assert not any(status(d) in ("failed", "diverged") for d in runs), out
    finished_2 = [d for d in runs if status(d) == "succeeded"]
    ckpt_2 = {d: (ckpt_steps(d) or [0])[-1] for d in runs}
    t_final = time.time()
    assert snapshot(finished_1) == before  # finished runs were skipped: files untouched
    before = snapshot(finished_2)

    # 4. Run again: it completes; nothing finished is retrained, interrupted runs resume from checkpoints.
    proc = start_driver(spec_path, results, step_s=0.0)
    out = finish(proc)
    assert proc.returncode == 0, out
    assert snapshot(finished_2) == before
    for d in runs:
        assert status(d) == "succeeded"
        assert sorted(set(logged_steps(d))) == list(range(1, steps + 1))
        for a in attempts(d):  # every restart picked up at the run's latest checkpoint of that moment
            if t_restart <= a["time"] < t_final:
                assert a["start_step"] == ckpt_1[d], (d.name, attempts(d), ckpt_1[d])
            elif a["time"] >= t_final:
                assert a["start_step"] == ckpt_2[d], (d.name, attempts(d), ckpt_2[d])
    assert any(len(attempts(d)) > 1 for d in runs)
    check_table(results, "dk", len(runs))
    # and a fourth run has nothing to do and touches no run folder
    before = snapshot(runs)
    proc = start_driver(spec_path, results, step_s=0.0)
    out = finish(proc)
    assert proc.returncode == 0 and "nothing to run" in out, out
    assert snapshot(runs) == before
