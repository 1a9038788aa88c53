"""Launch one process per host of a Ray cluster, joined into one JAX cluster (GPU clusters).

``launch_on_ray(argv, hosts=16, gpus_per_host=8)`` reserves one bundle of ``gpus_per_host`` GPUs on each of
``hosts`` distinct nodes (a ``STRICT_SPREAD`` placement group), asks the node of bundle 0 for its address and
a free port (the JAX coordinator), then runs ``argv`` once per bundle as a subprocess with
``MOELAB_COORDINATOR``, ``MOELAB_NUM_PROCESSES`` and ``MOELAB_PROCESS_ID`` set; a command that calls
``moelab.parallel.distributed.initialize_distributed()`` (e.g. ``moelab train --distributed ...``) then sees
every GPU of the cluster. Each host's program runs in a fresh subprocess so that its JAX starts clean (the
Ray worker may already have imported JAX on another backend). Returns the exit codes, in process order.

Connect to the cluster first (``ray.init(address="auto")``), or pass ``address``; without a running session
an embedded local Ray is started (a test on one machine uses ``strategy="SPREAD"`` and 0 GPUs).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping, Sequence

from moelab.errors import ConfigError

STRATEGIES = ("STRICT_SPREAD", "SPREAD", "PACK", "STRICT_PACK")


def _coordinator_address() -> tuple[str, int]:
    import ray  # heavy (seconds to import): only a Ray launch needs it

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def _run_host(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> int:
    full = dict(os.environ)
    full.update(env)
    return subprocess.run(list(argv), env=full, cwd=cwd, check=False).returncode


def launch_on_ray(
    argv: Sequence[str],
    *,
    hosts: int,
    gpus_per_host: int = 8,
    cpus_per_host: int = 1,
    strategy: str = "STRICT_SPREAD",
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float = 600.0,
) -> list[int]:
    """Run ``argv`` once per host (see the module docstring); returns the exit codes in process order."""
    import ray  # heavy (seconds to import): only a Ray launch needs it
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not argv:
        raise ConfigError("argv must name the command each host runs")
    if not (isinstance(hosts, int) and hosts >= 1):
        raise ConfigError(f"hosts must be an integer >= 1, got {hosts!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {'|'.join(STRATEGIES)}, got {strategy!r}")
    if not ray.is_initialized():
        ray.init(address="auto" if os.environ.get("RAY_ADDRESS") else None)
    bundle = {"CPU": cpus_per_host, **({"GPU": gpus_per_host} if gpus_per_host else {})}
    pg = placement_group([dict(bundle) for _ in range(hosts)], strategy=strategy)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            raise ConfigError(
                f"Ray could not place {hosts} bundles of {bundle} ({strategy}) within {timeout_s:.0f} s"
            )

        def on(i: int):
            return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)

        coord = ray.remote(num_cpus=0)(_coordinator_address)
        ip, port = ray.get(coord.options(scheduling_strategy=on(0)).remote(), timeout=timeout_s)
        task = ray.remote(_run_host)
        refs = []
        for i in range(hosts):
            host_env = {**(env or {}), "MOELAB_COORDINATOR": f"{ip}:{port}",
                        "MOELAB_NUM_PROCESSES": str(hosts), "MOELAB_PROCESS_ID": str(i)}
            opts = dict(num_cpus=cpus_per_host, num_gpus=gpus_per_host, scheduling_strategy=on(i))
            refs.append(task.options(**opts).remote(list(argv), host_env, cwd))
        return [int(c) for c in ray.get(refs, timeout=timeout_s)]
    finally:
        remove_placement_group(pg)
