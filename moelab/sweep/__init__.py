"""Sweeps: YAML specs -> content-hashed trials -> Ray-scheduled training -> one runs.parquet per sweep.

- ``moelab.sweep.spec``: ``SweepSpec.from_file(path)``, ``spec.trials()``;
- ``moelab.sweep.runid``: ``run_id(run_config)``;
- ``moelab.sweep.plan``: the dry-run table (``moelab sweep plan``);
- ``moelab.sweep.scheduler``: ``run_sweep(spec, results)`` (``moelab sweep run``);
- ``moelab.sweep.store``: runs.parquet rows; read them back with ``moelab.results.load``;
- ``moelab.sweep.bench``: ``run_sweep_bench()``, Ray scheduling overhead.

Importing this package imports neither Ray nor JAX (a sweep that runs trials starts Ray; trials import JAX).
"""

from __future__ import annotations

from moelab.sweep.scheduler import run_sweep as _run_sweep
from moelab.sweep.spec import SweepSpec

__all__ = ["load_spec", "run_sweep"]


def load_spec(path) -> SweepSpec:
    return SweepSpec.from_file(path)


def run_sweep(spec, results="results", **kwargs):
    return _run_sweep(spec, results, **kwargs)
