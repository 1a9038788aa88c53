"""The worker side of a sweep: one Ray task trains one run into its folder.

``execute_trial`` runs inside a Ray worker whose environment (set through the task's ``runtime_env`` before
the worker process starts, so before JAX is imported) limits XLA and BLAS threads to the CPUs the trial was
given (``thread_env``). It records each attempt in ``attempts.jsonl`` (pid, host, the checkpoint step it
starts from), so a retry after a dead worker is visible, and calls the trainer, which resumes from
``RUN_DIR/checkpoints`` by itself. A trainer exception becomes ``status: failed`` in summary.json (unless the
trainer already recorded failed or diverged); a killed worker leaves ``status: running`` for Ray's retry (or
the next ``moelab sweep run``) to resume.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from moelab.files import write_json_atomic
from moelab.sweep.state import FINISHED, checkpoint_steps, read_summary
from moelab.train.config import RunConfig

DEFAULT_TRAINER = "moelab.train:run_training"
#: Environment variable naming another trainer ``module:function`` (tests use a fast stand-in).
TRAINER_ENV = "MOELAB_SWEEP_TRAINER"


def thread_env(cpus: float, gpus: float = 0.0) -> dict[str, str]:
    """Environment of a trial's worker: thread pools sized to its CPUs, GPU memory to its GPU share.

    ``PJRT_NPROC`` sizes XLA's CPU client thread pool (xla/pjrt/cpu/cpu_client.cc reads it before falling back
    to the number of schedulable CPUs); the OpenMP / OpenBLAS / MKL variables size NumPy's BLAS. A fractional
    GPU share caps JAX's preallocation at that fraction so several trials can share a GPU.
    """
    n = str(max(1, int(cpus)))
    env = {
        "PJRT_NPROC": n,
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if 0 < gpus < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpus:.3f}"
    return env


def load_trainer(spec: str | None = None):
    """The trainer ``module:function`` (default ``moelab.train:run_training``, docs/architecture.md)."""
    spec = spec or os.environ.get(TRAINER_ENV) or DEFAULT_TRAINER
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name or "run_training", None)
    if fn is None and spec == DEFAULT_TRAINER:  # the run loop module, when the package does not re-export it
        fn = importlib.import_module("moelab.train.loop").run_training
    if fn is None:
        raise ImportError(f"trainer {spec} not found")
    return fn


def execute_trial(
    run_dict: dict[str, Any], run_dir: str, trainer: str | None = None, tracker=(), group: str | None = None
) -> dict[str, Any]:
    """Train one run into ``run_dir`` (resuming from its checkpoints) and return its summary; ``tracker``
    (names, ``moelab.train.trackers``) and ``group`` (the sweep name) reach the trainer only when set."""
    run_dir_p = Path(run_dir)
    run_dir_p.mkdir(parents=True, exist_ok=True)
    steps = checkpoint_steps(run_dir_p)
    attempt = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_step": steps[-1] if steps else 0,
        "time": time.time(),
        "oom_kills": oom_kills(),
    }
    with open(run_dir_p / "attempts.jsonl", "a") as f:
        f.write(json.dumps(attempt) + "\n")
    # The driver decides about interruptions (it cancels or shuts Ray down); a terminal's Ctrl-C must not
    # reach the trainer as a KeyboardInterrupt that it could record as a failure.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    fn = load_trainer(trainer)
    run = RunConfig.from_dict(run_dict)
    with _log_to(run_dir_p / "trial.log"):
        try:
            extra = {"tracker": tuple(tracker), "group": group} if tracker else {}
            summary = fn(run, run_dir_p, progress=False, **extra)
        except Exception as exc:  # noqa: BLE001 - recorded in summary.json, reported by the driver
            traceback.print_exc()
            summary = mark_failed(run_dir_p, f"{type(exc).__name__}: {exc}")
        except BaseException:  # an interruption (SystemExit on SIGTERM, KeyboardInterrupt): resume later
            mark_interrupted(run_dir_p)
            raise
    return dict(summary or read_summary(run_dir_p) or {})


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed on this host since boot (``/proc/vmstat``
    ``oom_kill``, Linux >= 4.13; memory-cgroup kills included), or None where it is not available."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def death_reason(run_dir: Path) -> str:
    """What the host says about a worker that died without a word: an OOM kill during its last attempt (the
    kernel's counter went up since the attempt started, on this host), else ""."""
    try:
        last = json.loads((Path(run_dir) / "attempts.jsonl").read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return ""
    before, now = last.get("oom_kills"), oom_kills()
    if last.get("host") != socket.gethostname() or before is None or now is None or now <= before:
        return ""
    return (
        f"out of memory: the kernel's OOM killer killed {now - before} process(es) on this host during the "
        "trial's last attempt"
    )


def mark_failed(run_dir: Path, error: str) -> dict[str, Any]:
    """Record ``status: failed`` with ``error`` unless the trainer already wrote a finished status."""
    summary = read_summary(run_dir) or {}
    if summary.get("status") in FINISHED:
        return summary
    summary.update(status="failed", error=str(error).strip().splitlines()[-1][:500] if error else "failed")
    write_json_atomic(Path(run_dir) / "summary.json", summary)
    return summary


def mark_interrupted(run_dir: Path) -> None:
    """Undo a ``failed`` that a trainer wrote for an interruption: the run is ``running`` and will resume."""
    summary = read_summary(run_dir)
    if summary and summary.get("status") == "failed":
        summary.update(status="running", error=None)
        write_json_atomic(Path(run_dir) / "summary.json", summary)


@contextlib.contextmanager
def _log_to(path: Path):
    """Send this process's stdout/stderr (Python and native, e.g. XLA) to the run's trial.log meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
