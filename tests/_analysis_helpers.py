"""Synthetic runs tables for the analysis tests: a law's losses at known parameters times log-normal noise."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from analysis.laws import get_law

CHIN_TRUE = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
GRAN_TRUE = {"c": 0.47, "g": 2.1, "gamma": 0.58, "a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147}
CLARK_TRUE = {"a": -0.082, "b": -0.108, "c": 0.009, "d": 1.104, "E_start": 1.847, "E_max": 314.5}
JOINT_TRUE = {
    "a": 300.0, "b": 2000.0, "c": 1.6, "alpha": -0.32, "beta": -0.36,
    "delta": -0.25, "gamma": 0.01, "omega": 0.0, "zeta": 0.01,
}  # fmt: skip
SHARED_TRUE = {**JOINT_TRUE, "kappa": 2.0, "r_star": 0.4}


def grid_runs(**axes) -> pd.DataFrame:
    """The cartesian product of named value lists as a runs table."""
    names = list(axes)
    rows = list(itertools.product(*(axes[n] for n in names)))
    df = pd.DataFrame(rows, columns=names)
    df["run_id"] = [f"r{i}" for i in range(len(df))]
    return df


def with_loss(df: pd.DataFrame, law: str, params: dict, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    df = df.copy()
    rng = np.random.default_rng(seed)
    df["loss"] = get_law(law).predict(params, df) * np.exp(noise * rng.normal(size=len(df)))
    df["flops"] = 6.0 * df["active_params"] * df["tokens"]
    return df


def chinchilla_runs(noise: float = 0.01, seed: int = 0, params: dict = CHIN_TRUE) -> pd.DataFrame:
    """48 runs: 8 sizes x 6 token counts."""
    base = grid_runs(active_params=np.logspace(7, 9.5, 8), tokens=np.logspace(9, 11.5, 6))
    return with_loss(base, "chinchilla", params, noise, seed)


def moe_runs() -> pd.DataFrame:
    """4 sizes x 4 token counts x 4 expert counts (1 = dense), granularity and shared_ratio varying."""
    df = grid_runs(active_params=np.logspace(7, 9, 4), tokens=np.logspace(9, 11, 4), n_experts=[1, 4, 16, 64])
    df["granularity"] = np.where(df["n_experts"] > 1, np.log2(df["n_experts"]), 1.0)
    rng = np.random.default_rng(1)
    r = rng.choice([0.0, 0.25, 0.5, 0.75], size=len(df))
    df["shared_ratio"] = np.where(df["n_experts"] > 1, r, np.nan)
    return df
