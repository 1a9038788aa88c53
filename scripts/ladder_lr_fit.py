"""The ladder's learning-rate law from its LR search:
``python scripts/ladder_lr_fit.py data/ladder/ladder_lr [data/ladder/lr_law.json]``.

Only the runs of today's sweeps/ladder_lr.yaml enter the fit (matched by run id): the folder also keeps the
runs of its earlier recipes (the E=8 runs at aux_loss_coef 0.01, before the ladder's MoE arms moved to 0.05),
which would otherwise share a cell with the runs they differ from.

Each (size, E) cell of sweeps/ladder_lr.yaml tried six rates a factor 2 apart; ``analysis.hyper.cell_optima``
fits a parabola of the held-out loss in log LR per cell (with a residual bootstrap of its vertex), and
``fit_hyper_laws`` fits ``eta_opt(N, E) = a * N^bN * E^bE`` through the cells whose optimum lies inside the
rates tried. Writes data/ladder/lr_law.json (coefficients, 95% intervals, the cells) for
scripts/make_ladder.py, and prints the cells.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from analysis.hyper import cell_optima, fit_hyper_laws
from analysis.load import load_runs
from moelab.sweep.spec import SweepSpec

REPO = Path(__file__).resolve().parents[1]


def main(results: str, out: str) -> None:
    ids = {t.run_id for t in SweepSpec.from_file(REPO / "sweeps" / "ladder_lr.yaml").trials()}
    every = load_runs(results)
    runs = every[every["run_id"].isin(ids)]
    print(f"{len(runs)} of {len(every)} runs are in sweeps/ladder_lr.yaml's plan")
    opt = cell_optima(runs, loss_col="loss", cell_cols=("active_params", "n_experts"), n_boot=400)
    print(opt.table[["active_params", "n_experts", "n_runs", "eta_opt", "inside_lr", "loss_opt"]].to_string())
    laws, notes = fit_hyper_laws(opt)
    for note in notes:
        print("note:", note)
    law = laws["eta_opt(N, E)"]
    p = law.params
    doc = {
        "a": float(np.exp(law.coef[0])),
        "bN": float(law.coef[1]),
        "bE": float(law.coef[2]),
        "fit": law.to_dict(),
        "cells": json.loads(opt.table.to_json(orient="records")),
        "source": f"sweeps/ladder_lr.yaml, {len(runs)} runs, parabola in log LR per cell",
        "run_ids": sorted(runs["run_id"]),
    }
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    print(law.formula, {k: v for k, v in p.items()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(REPO / "data" / "ladder" / "lr_law.json"))
