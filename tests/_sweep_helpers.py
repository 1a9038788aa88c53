"""A stand-in trainer for the sweep tests: the run-folder contract of moelab.train without JAX.

``fake_training(run, out_dir)`` writes config.json, metrics.jsonl, summary.json (``running`` then
``succeeded``; ``diverged`` when ``train.lr >= 1``; an exception when ``train.seed == 13``) and a checkpoint
folder per ``checkpoint_every`` steps (written to a temporary name, then renamed, as orbax does), resumes
from the latest checkpoint, and sleeps ``MOELAB_FAKE_STEP_S`` seconds per step so tests can kill it mid-run.
With ``MOELAB_FAKE_OOM_CGROUP`` set (a memory cgroup folder), the run with ``train.seed == 7`` joins it
and allocates four times its limit, so that the kernel OOM-kills the worker.
The loss is a deterministic function of config and step: a resumed run logs what an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from moelab.files import write_json_atomic
from moelab.sweep.state import checkpoint_steps


def fake_loss(run, step: int) -> float:
    n = run.model.d_model * run.model.n_layers
    return 1.5 + 20.0 / math.sqrt(n) + 3.0 / math.sqrt(step + 1) + 0.01 * run.train.seed


def fake_training(run, out_dir, *, progress=None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", run.to_dict())
    steps = run.total_steps()
    done = checkpoint_steps(out)
    start = done[-1] if done else 0
    t0 = time.time()
    base = {"status": "running", "steps": steps, "active_params": None, "versions": {"moelab": "test"}}
    write_json_atomic(out / "summary.json", base)
    delay = float(os.environ.get("MOELAB_FAKE_STEP_S", "0"))
    cgroup = os.environ.get("MOELAB_FAKE_OOM_CGROUP")
    if cgroup and run.train.seed == 7:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
        v1 = Path(cgroup, "memory.limit_in_bytes")
        limit = int((v1 if v1.is_file() else Path(cgroup, "memory.max")).read_text())
        hog = bytearray(4 * limit)
        for i in range(0, len(hog), 4096):  # touch every page: the memory is really used
            hog[i] = 1
    if run.train.seed == 13:
        raise RuntimeError("injected failure for seed 13")
    threads = {k: os.environ.get(k) for k in ("PJRT_NPROC", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    every = run.train.checkpoint_every
    tokens_per_step = run.train.tokens_per_step
    with open(out / "metrics.jsonl", "a") as f:
        for step in range(start + 1, steps + 1):
            time.sleep(delay)
            if run.train.lr >= 1.0 and step >= 2:
                summary = {**base, "status": "diverged", "diverged_step": step, "error": "loss is NaN"}
                write_json_atomic(out / "summary.json", summary)
                return summary
            line = {"step": step, "tokens": step * tokens_per_step, "loss": fake_loss(run, step)}
            f.write(json.dumps(line) + "\n")
            f.flush()
            if step % every == 0 or step == steps:
                tmp = out / "checkpoints" / f"{step}.orbax-checkpoint-tmp-1"
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / "state.json").write_text(json.dumps({"step": step}))
                os.replace(tmp, out / "checkpoints" / str(step))
        eval_loss = fake_loss(run, steps) + 0.05
        f.write(json.dumps({"step": steps, "eval_loss": eval_loss}) + "\n")
    wall = time.time() - t0
    summary = {
        **base,
        "status": "succeeded",
        "eval_loss": eval_loss,
        "train_loss": fake_loss(run, steps),
        "tokens": steps * tokens_per_step,
        "flops": steps * tokens_per_step * run.flops_per_token(),
        "wall_time_s": wall,
        "tokens_per_s": (steps - start) * tokens_per_step / max(wall, 1e-6),
        "threads": threads,
        "expert_load": [[1.0 / run.model.n_experts] * run.model.n_experts] * run.model.n_layers,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def paced_training(run, out_dir, *, progress=None, **kw) -> dict:
    """The real trainer (``moelab.train.run_training``), sleeping ``MOELAB_PACE_S`` seconds at every log line.

    The pause sits outside the jitted step (in the progress callback), so the run's losses and checkpoints are
    those of ``run_training`` itself; it only widens the window in which a test's kill lands before the run
    finishes (a warm compilation cache trains a tiny model's 150 steps in about a second).
    """
    from moelab.train import run_training

    pace = float(os.environ.get("MOELAB_PACE_S", "0"))
    return run_training(run, out_dir, progress=lambda step, total, text: time.sleep(pace), **kw)
