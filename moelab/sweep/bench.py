"""Scheduling overhead of Ray sweeps: the same short trials through ``moelab sweep run`` and back to back.

``run_sweep_bench()`` trains ``n_trials`` identical-shape tiny runs (seeds differ), each variant in a fresh
Python process so every figure includes interpreter start, imports and (for Ray) starting the embedded
instance: back to back in one process under the trial's thread limits (the reference) and without limits,
then through Ray at each concurrency. JAX's persistent compilation cache is warmed first so no variant pays
a cold compile the others do not.
``python -m moelab.sweep.bench`` prints the result as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moelab.sweep.trial import thread_env

_SEQUENTIAL = """
import sys, time
from pathlib import Path
from moelab.sweep.spec import SweepSpec
from moelab.sweep.trial import load_trainer
spec = SweepSpec.from_file(sys.argv[1])
train = load_trainer(sys.argv[3] or None)
for t in spec.trials()[: int(sys.argv[4])]:
    train(t.run, Path(sys.argv[2]) / spec.name / "runs" / t.run_id)
"""


def bench_spec(n_trials: int, tokens: int, active_params: float, n_experts: int) -> dict[str, Any]:
    return {
        "name": "bench",
        "model": {"vocab_size": 256, "max_seq_len": 64},
        "train": {
            "seq_len": 64,
            "batch_size": 8,
            "eval_tokens": 4096,
            "eval_every": 10**6,
            "checkpoint_every": 10**6,
            "log_every": 50,
        },
        "axes": {"active_params": [active_params], "n_experts": [n_experts], "tokens": [tokens]},
        "seeds": list(range(n_trials)),
        "resources": {"cpus": 1},
        "retries": 1,
    }


def run_sweep_bench(n_trials: int = 8, concurrencies: tuple[int, ...] = (1, 2), tokens: int = 64 * 8 * 600,
                    active_params: float = 3e4, n_experts: int = 4, trainer: str | None = None,
                    workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Wall times of ``n_trials`` trials back to back vs through Ray at each concurrency (seconds).

    Returns ``{"sequential_s", "sequential_all_threads_s", "ray_s": {c: s}, "ratio": {c: ray/sequential},
    "ratio_c1", "best_concurrency", "speedup_best", "trial_s": {variant: summed trainer time}, ...}``;
    the issue's target is ``ratio_c1 <= 1.10``.
    """
    trainer = trainer or os.environ.get("MOELAB_SWEEP_TRAINER") or ""
    with tempfile.TemporaryDirectory(prefix="moelab-bench-", dir=workdir) as tmp:
        tmp = Path(tmp)
        spec_path = tmp / "bench.yaml"
        spec_path.write_text(json.dumps(bench_spec(n_trials, tokens, active_params, n_experts)))
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        if trainer:
            env["MOELAB_SWEEP_TRAINER"] = trainer

        def timed(cmd: list[str], extra_env: dict[str, str] | None = None) -> float:
            t0 = time.perf_counter()
            out = subprocess.run(cmd, env={**env, **(extra_env or {})}, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"bench step failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
            return time.perf_counter() - t0

        seq = [sys.executable, "-c", _SEQUENTIAL, str(spec_path)]
        warm = timed([*seq, str(tmp / "warm"), trainer, "1"])
        # The reference runs each trial under the thread limits a Ray trial gets (1 CPU), so the ratio is the
        # scheduling overhead alone; the unlimited run is what one process does with the whole machine.
        sequential = timed([*seq, str(tmp / "seq"), trainer, str(n_trials)], thread_env(1))
        unlimited = timed([*seq, str(tmp / "all"), trainer, str(n_trials)])
        ray_s = {}
        for c in concurrencies:
            cmd = [sys.executable, "-m", "moelab", "sweep", "run", str(spec_path), "--results",
                   str(tmp / f"ray{c}"), "--max-concurrency", str(c), "--no-live",
                   "--num-cpus", str(max(c, os.cpu_count() or 1))]
            ray_s[c] = timed(cmd)
        variants = ["seq", "all"] + [f"ray{c}" for c in ray_s]
        trial_s = {name: _trial_seconds(tmp / name / "bench") for name in variants}
    ratio = {c: s / sequential for c, s in ray_s.items()}
    best = min(ray_s, key=ray_s.get)
    return {
        "n_trials": n_trials, "tokens_per_trial": tokens, "active_params": active_params,
        "n_experts": n_experts,
        "cpus": os.cpu_count(), "warmup_s": warm, "sequential_s": sequential,
        "sequential_all_threads_s": unlimited, "ray_s": ray_s, "ratio": ratio, "ratio_c1": ratio.get(1),
        "best_concurrency": best, "speedup_best": min(sequential, unlimited) / ray_s[best],
        "trial_s": trial_s,
        "trainer": trainer or "moelab.train:run_training",
    }


def _trial_seconds(sweep: Path) -> float:
    """Sum of the trainer's own wall_time_s over a variant's runs (the rest of the wall time is overhead)."""
    files = sweep.glob("runs/*/summary.json")
    return sum(float(json.loads(p.read_text()).get("wall_time_s") or 0.0) for p in files)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens", type=int, default=64 * 8 * 600)
    args = p.parse_args()
    print(json.dumps(run_sweep_bench(args.trials, tuple(args.concurrency), args.tokens), indent=2))
