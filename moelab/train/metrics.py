"""Run-folder files: metrics.jsonl, provenance (versions, git commit) and the measured
matmul peak that model FLOP utilisation is quoted against."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import optax

from moelab import __version__
from moelab.files import json_safe, name_file

METRIC_KEYS = (
    "step",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "aux_loss",
    "z_loss",
    "load_min",
    "load_max",
    "dropped_frac",
    "recycled_frac",
    "tokens_per_s",
    "mfu",
)


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            break
    return out


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the lines up to ``last_step`` (the resumed checkpoint) and drop what came after it (atomic)."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=Path(path).parent)
    with os.fdopen(fd, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


class MetricsWriter:
    def __init__(self, path: Path):
        self._f = open(path, "a")  # noqa: SIM115  (kept open for the run)

    def write(self, row: dict) -> None:
        try:
            self._f.write(json.dumps(json_safe(row)) + "\n")
            self._f.flush()
        except OSError as exc:
            name_file(exc, self._f.name)
            raise

    def close(self) -> None:
        try:
            self._f.close()  # flushes what a failed write left in the buffer: may fail the same way
        except OSError as exc:
            name_file(exc, self._f.name)
            raise


@functools.cache
def versions() -> dict:
    return {
        "moelab": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
    }


@functools.cache
def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@functools.cache
def peak_flops() -> float:
    """Measured float32 matmul throughput (FLOP/s) of the default JAX device: the MFU denominator.

    CPU: a 1024-square product (DESIGN.md: about 35 GFLOP/s on the 2-core machine); accelerators: 4096.
    Best of five timed calls after a warm-up.
    """
    n = 1024 if jax.default_backend() == "cpu" else 4096
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best
