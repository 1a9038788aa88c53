"""Fit benchmarks for ``moelab bench fit``: the 4,500-start Chinchilla grid and 1,000 bootstrap refits.

Targets on the 2-core CPU machine (issue 6): the grid on 240 points in <= 10 s (a naive SciPy loop takes about
11 minutes), 1,000 bootstrap refits in <= 120 s. Uses Besiroglu et al.'s extracted data when ../shared/data is
present, else 240 synthetic points from their fitted law with 2% noise. Each timing is reported for the first
call in the process (including JAX compilation or its persistent-cache load) and for a repeat.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

EPOCH_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "chinchilla_svg_extracted.csv"
EPOCH = {"E": 1.8172, "A": 477.84, "B": 2143.86, "alpha": 0.3473, "beta": 0.3672}


def bench_data() -> tuple[pd.DataFrame, str]:
    """The 240 reference points (or a synthetic stand-in) and a label saying which."""
    if EPOCH_CSV.is_file():
        raw = pd.read_csv(EPOCH_CSV).sort_values("loss").iloc[:-5]
        N = raw["Model Size"].to_numpy(float)
        df = pd.DataFrame({"active_params": N, "tokens": raw["Training FLOP"].to_numpy(float) / (6 * N)})
        df["loss"] = raw["loss"].to_numpy(float)
        return df, str(EPOCH_CSV)
    from analysis.laws import CHINCHILLA

    rng = np.random.default_rng(0)
    N = np.exp(rng.uniform(np.log(5e7), np.log(1.6e10), 240))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), 240))
    L = CHINCHILLA.predict(EPOCH, np.log(np.stack([N, D], -1))) * np.exp(0.02 * rng.normal(size=240))
    return pd.DataFrame(
        {"active_params": N, "tokens": D, "loss": L}
    ), "synthetic (Besiroglu et al. law + 2% noise)"


def run_fit_bench(n_boot: int = 1000, repeats: int = 2) -> dict:
    """Time the 4,500-start grid fit and ``n_boot`` bootstrap refits; returns a JSON-ready dict."""
    import os

    from analysis.bootstrap import bootstrap
    from analysis.fit import fit

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
