"""Fit benchmarks for ``moelab bench fit``: the 4,500-start Chinchilla grid and 1,000 bootstrap refits.

Targets on the 2-core CPU machine (issue 6): the grid on 240 points in <= 10 s (a naive SciPy loop takes about
11 minutes), 1,000 bootstrap refits in <= 120 s. Uses Besiroglu et al.'s extracted data (the bundled dataset
epoch-chinchilla, 5 highest losses dropped). Each timing is reported for the first call in the process
(including JAX compilation or its persistent-cache load) and for a repeat. ``moelab bench laws`` (every law on
every dataset, held-out errors) is :mod:`analysis.bench_laws`.
"""

from __future__ import annotations

import os
import time

import pandas as pd

from analysis import datasets
from analysis.bootstrap import bootstrap
from analysis.fit import fit


def bench_data() -> tuple[pd.DataFrame, str]:
    """The 240 reference points and a label saying where they come from."""
    return datasets.load("epoch-chinchilla"), f"epoch-chinchilla ({datasets.get('epoch-chinchilla').path})"


def run_fit_bench(n_boot: int = 1000, repeats: int = 2) -> dict:
    """Time the 4,500-start grid fit and ``n_boot`` bootstrap refits; returns a JSON-ready dict."""
    df, source = bench_data()
    grid_s, boot_s = [], []
    res = None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fit(df, "chinchilla")
        grid_s.append(time.perf_counter() - t)
    for r in range(repeats):
        t = time.perf_counter()
        bootstrap(res, n_boot, seed=r)
        boot_s.append(time.perf_counter() - t)
    return {
        "data": source,
        "n_points": res.n_points,
        "n_starts": res.n_starts,
        "grid_fit_s": grid_s,
        "grid_fit_target_s": 10.0,
        "n_bootstrap": n_boot,
        "bootstrap_s": boot_s,
        "bootstrap_target_s": 120.0,
        "params": res.params,
        "cpu_count": os.cpu_count(),
        "note": "first entry includes JAX compilation (or loading it from the persistent cache)",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run_fit_bench(), indent=1))
