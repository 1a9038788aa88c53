"""Training runs: configs (``DataConfig``, ``TrainConfig``, ``RunConfig``), the optimiser and the run loop.

``run_training(run, out_dir, *, progress=None) -> dict`` trains one model and writes its run folder
(docs/architecture.md); it is imported lazily so that ``import moelab.train`` stays light (no JAX).
"""

from __future__ import annotations

from moelab.train.config import DataConfig, RunConfig, TrainConfig, load_run_config

__all__ = ["DataConfig", "RunConfig", "TrainConfig", "load_run_config", "run_training"]


def __getattr__(name: str):
    if name == "run_training":
        # lazy: the loop imports JAX; configs and the sweep planner need not
        from moelab.train.loop import run_training

        return run_training
    raise AttributeError(f"module 'moelab.train' has no attribute {name!r}")
