"""Multi-host start-up: ``initialize_distributed`` around ``jax.distributed.initialize``.

- **TPU pods** (a TPU VM slice, every host running the same command): call it with no arguments; JAX finds
  the coordinator, the process count and this host's id from the TPU metadata.
- **GPU clusters**: pass ``coordinator`` ("host:port" of process 0), ``num_processes`` and
  ``process_id``, or set them in the environment: ``MOELAB_COORDINATOR``, ``MOELAB_NUM_PROCESSES``,
  ``MOELAB_PROCESS_ID`` (JAX's own ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
  are honoured too). SLURM and Open MPI launches are auto-detected by JAX when nothing is given.

Call it once per process before any other JAX call (``moelab train --distributed`` does). Afterwards
``jax.devices()`` lists every chip of the cluster and ``moelab.parallel.mesh.make_mesh`` spans all of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import jax

from moelab.errors import ConfigError

_ENV = {
    "coordinator": ("MOELAB_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("MOELAB_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("MOELAB_PROCESS_ID", "JAX_PROCESS_ID"),
}


@dataclass(frozen=True)
class DistributedArgs:
    """Resolved arguments; all None means "let JAX discover the cluster" (TPU pods, SLURM, Open MPI)."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None

    def kwargs(self) -> dict:
        out = {}
        if self.coordinator is not None:
            out["coordinator_address"] = self.coordinator
        if self.num_processes is not None:
            out["num_processes"] = self.num_processes
        if self.process_id is not None:
            out["process_id"] = self.process_id
        return out


def resolve_args(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedArgs:
    """Explicit arguments win over the environment; the result is validated (one-line ConfigError)."""
    env = os.environ if env is None else env

    def from_env(name: str):
        for var in _ENV[name]:
            if env.get(var, "").strip():
                return env[var].strip(), var
        return None, None

    values: dict = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for name in values:
        if values[name] is None:
            raw, var = from_env(name)
            if raw is not None and name != "coordinator":
                try:
                    raw = int(raw)
                except ValueError:
                    raise ConfigError(f"{var} must be an integer, got {raw!r}") from None
            values[name] = raw
    coord, n, pid = values["coordinator"], values["num_processes"], values["process_id"]
    if coord is not None and (":" not in str(coord) or not str(coord).rsplit(":", 1)[1].isdigit()):
        raise ConfigError(f"coordinator must look like 'host:port', got {coord!r}")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError(f"num_processes must be an integer >= 1, got {n!r}")
    if pid is not None and (not isinstance(pid, int) or pid < 0 or (n is not None and pid >= n)):
        raise ConfigError(f"process_id must be an integer in [0, num_processes={n}), got {pid!r}")
    given = [v is not None for v in (coord, n, pid)]
    if any(given) and not all(given):
        names = ("coordinator", "num_processes", "process_id")
        missing = ", ".join(k for k, g in zip(names, given, strict=True) if not g)
        raise ConfigError(
            f"GPU clusters need coordinator, num_processes and process_id together; missing {missing} "
            "(set them as arguments or MOELAB_COORDINATOR / MOELAB_NUM_PROCESSES / MOELAB_PROCESS_ID)"
        )
    return DistributedArgs(coord, n, pid)


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
) -> DistributedArgs:
    """Join this process to the cluster (``jax.distributed.initialize``); returns the arguments it used.

    With nothing given and nothing in the environment, JAX auto-detects the cluster (TPU pod metadata, SLURM,
    Open MPI). Calling it twice is an error in JAX; calling it with one process is allowed (a no-op cluster).
    """
    args = resolve_args(coordinator, num_processes, process_id)
    jax.distributed.initialize(initialization_timeout=initialization_timeout, **args.kwargs())
    return args
