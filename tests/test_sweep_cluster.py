"""`moelab sweep run --address` against a real Ray cluster started with `ray start --head` (token
authentication on, no dashboard), as a user with a cluster does it; the trainer is the stand-in of
tests/_sweep_helpers.py. A second run through RAY_ADDRESS skips every finished run. A wrong address is a
one-line error with exit code 2."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import psutil
import pytest

from moelab.sweep.spec import SweepSpec
from moelab.sweep.state import read_summary

REPO = Path(__file__).resolve().parents[1]


def ray_command() -> list[str]:
    """Ray's command line: the ``ray`` script of this interpreter's environment (the venv's bin, even when
    pytest runs through a symlinked or system interpreter), else Ray's own entry point run by this
    interpreter. Ray is a dependency, so this test never skips for want of the command."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        script = Path(folder) / "ray"
        if script.is_file():
            return [str(script)]
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    ray = ray_command()
    port = free_port()
    # A short temp dir: Ray's socket paths must stay under the 107-byte limit of AF_UNIX.
    temp = Path(f"/tmp/moelab-ray-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "PYTHONPATH": str(REPO),
    }
    start = [
        *ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
        "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats",
    ]  # fmt: skip
    out = subprocess.run(start, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        pytest.fail(f"ray start failed: {out.stdout}\n{out.stderr}")
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_cluster(temp: Path) -> None:
    """Kill this test's Ray processes only (those started under its temp dir): ``ray stop --force`` kills
    every Ray on the machine, and a sweep or demo running beside the test suite lost its raylet to it."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp) in arg for arg in proc.info["cmdline"] or ()):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def sweep(spec: Path, results: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "moelab", "sweep", "run", str(spec), "--results", str(results), "--no-live"]
    env = {**env, "MOELAB_SWEEP_TRAINER": "tests._sweep_helpers:fake_training", "MOELAB_FAKE_STEP_S": "0"}
    return subprocess.run([*cmd, *extra], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_sweep_runs_on_a_ray_cluster_through_address_and_ray_address(tmp_path, cluster):
    address, env = cluster
    spec = tmp_path / "cluster.yaml"
    spec.write_text(
        "name: cluster\n"
        "model: {vocab_size: 256, max_seq_len: 64}\n"
        "train: {seq_len: 32, batch_size: 4, checkpoint_every: 5}\n"
        "axes: {active_params: [2.0e+4, 3.0e+4, 4.0e+4], tokens: [1280]}\n"
        "resources: {cpus: 1}\n"
        "max_concurrency: 2\n"
    )
    results = tmp_path / "results"
    first = sweep(spec, results, env, "--address", address)
    assert first.returncode == 0, first.stdout + first.stderr
    trials = SweepSpec.from_file(spec).trials()
    summaries = {t.run_id: read_summary(results / "cluster" / "runs" / t.run_id) for t in trials}
    assert all(s and s["status"] == "succeeded" for s in summaries.values()), summaries
    runs = results / "cluster" / "runs"
    attempts = {(runs / r / "attempts.jsonl").read_text().count('"pid"') for r in summaries}
    assert attempts == {1}
    mtimes = {r: (runs / r / "summary.json").stat().st_mtime_ns for r in summaries}

    # One more size: the rerun connects through RAY_ADDRESS, trains only the new run, keeps the others.
    spec.write_text(spec.read_text().replace("4.0e+4]", "4.0e+4, 5.0e+4]"))
    again = sweep(spec, results, {**env, "RAY_ADDRESS": address})
    log = again.stdout + again.stderr
    assert again.returncode == 0, log
    assert "1 succeeded, 0 failed, 0 diverged, 3 already finished" in log, log
    assert len(list(runs.iterdir())) == 4
    assert mtimes == {r: (runs / r / "summary.json").stat().st_mtime_ns for r in summaries}


def test_unreachable_address_is_a_one_line_error(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\naxes: {active_params: [2.0e+4], tokens: [1280]}\n")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    out = sweep(spec, tmp_path / "results", env, "--address", f"127.0.0.1:{free_port()}")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert lines and "--address" in lines[-1] and len(lines[-1]) < 400, out.stderr
    assert not (tmp_path / "results").exists()  # nothing written
