"""A report of any table of runs (``moelab report --csv FILE ...`` or ``--dataset NAME``): the runs table from
:func:`analysis.load.load_runs` or a bundled dataset, wrapped as the :class:`ResultsData` a results folder
gives (no training curves or router loads: a table holds final losses only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.cli import load_table
from analysis.report.data import ResultsData
from moelab.errors import MoelabError

__all__ = ["results_from_table", "table_data"]


def results_from_table(runs: pd.DataFrame, root: str | Path, source: dict[str, object]) -> ResultsData:
    """``runs`` (the runs schema) as report data rooted at ``root``; every row counts as a finished run, and
    compute is 6ND where the table gives none (Kaplan et al. 2020)."""
    runs = runs.reset_index(drop=True).copy()
    runs["status"] = "succeeded"
    if "flops" not in runs or not np.all(np.isfinite(runs["flops"].to_numpy(dtype=float))):
        runs["flops"] = 6.0 * runs["active_params"].astype(float) * runs["tokens"].astype(float)
    data = ResultsData(root=Path(root), runs=runs)
    data.provenance = {**source, "rows": len(runs)}
    return data


def table_data(args) -> tuple[Path, ResultsData]:
    """(report root, data) for ``moelab report --csv FILE ...`` / ``--dataset NAME`` (``args`` of the CLI)."""
    if args.results_dir is not None:
        raise MoelabError("give one of RESULTS_DIR, --csv FILE or --dataset NAME")
    args.results = []
    runs, ds = load_table(args)
    if ds is not None:
        name, source = ds.name, {"dataset": ds.name, "source": ds.source, "citation": ds.citation}
    else:
        name = runs["sweep"].iloc[0]
        source = {"csv": str(Path(args.csv).resolve()), "where": args.where}
    root = Path("results") / str(name)
    return root, results_from_table(runs, root, source)
