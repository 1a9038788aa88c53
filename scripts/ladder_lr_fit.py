"""The ladder's learning-rate law from its LR search:
``python scripts/ladder_lr_fit.py data/ladder/ladder_lr``.

Each (size, E) cell of sweeps/ladder_lr.yaml tried four rates a factor 2 apart; ``analysis.hyper.cell_optima``
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

REPO = Path(__file__).resolve().parents[1]


def main(results: str, out: str) -> None:
    runs = load_runs(results)
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
    }
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    print(law.formula, {k: v for k, v in p.items()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(REPO / "data" / "ladder" / "lr_law.json"))
