"""``moelab bench laws``: which law to trust on which kind of data.

Every registered law is fitted to every bundled dataset (:mod:`analysis.datasets`, each with its paper's
selection and loss) and to any results folder given, holding out the largest runs (every run at the largest N
when all runs share one token count, else the top 20% by compute: :func:`analysis.compare.default_holdout`),
and scored on the held-out runs: RMSE of the loss (nats/token) and the median of |predicted / observed - 1|.
The baseline row is the paper's own law with its published coefficients (:mod:`analysis.published`), not
refitted: those coefficients were fitted to the held-out runs too, so it is a reference point, not an
extrapolation. A law the data cannot support (a constant or missing column) is listed with the reason.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import datasets as ds_mod
from analysis.compare import default_holdout, predict_published
from analysis.fitting import DELTA
from analysis.laws import LAWS
from analysis.load import load_runs
from analysis.published import PUBLISHED
from analysis.validate import holdout, split_by_compute
from moelab.errors import MoelabError

__all__ = ["format_table", "run_laws_bench"]

BASELINE = "paper's law, published"


def _score(pred: np.ndarray, obs: np.ndarray) -> dict:
    return {
        "rmse": float(np.sqrt(np.mean((pred - obs) ** 2))),
        "median_abs_rel_error": float(np.median(np.abs(pred / obs - 1))),
    }


def _tables(names, results) -> list[tuple[str, pd.DataFrame, object]]:
    out = [(n, ds_mod.load(n), ds_mod.get(n)) for n in names]
    for p in results:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unfinished runs are dropped with a count; not the bench's news
            out.append((Path(p).name or str(p), load_runs(p), None))
    return out


def run_laws_bench(datasets=None, results=(), laws=None) -> dict:
    """Fit ``laws`` (default: every registered law) on ``datasets`` (default: every bundled one) and the
    results folders ``results``; returns a JSON-ready dict with one cell per (law, dataset)."""
    names = ds_mod.names() if datasets is None else list(datasets)
    laws = list(LAWS) if laws is None else list(laws)
    cells, meta = [], []
    t_all = time.perf_counter()
    for name, df, ds in _tables(names, results):
        kw = default_holdout(df)
        train, test = split_by_compute(df, **kw)
        obs = test["loss"].to_numpy(dtype=np.float64)
        meta.append(
            {
                "dataset": name,
                "n_runs": len(df),
                "n_train": len(train),
                "n_held_out": len(test),
                "holdout": "largest N"
                if kw["threshold"] is not None
                else f"top {kw['fraction']:.0%} compute",
                "paper_law": ds.law if ds else None,
                "published": ds.published if ds else None,
                "delta": ds.delta if ds else DELTA,
            }
        )
        if ds is not None and ds.published:
            pred = predict_published(PUBLISHED[ds.published], test)
            cells.append({"law": BASELINE, "dataset": name, "set": ds.published, **_score(pred, obs)})
        for law in laws:
            t = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # grid-edge warnings stay on the result
                    res = holdout(df, law, delta=ds.delta if ds else DELTA, **kw)
            except MoelabError as exc:
                cells.append({"law": law, "dataset": name, "skipped": str(exc).splitlines()[0]})
                continue
            h = res.holdout.table
            cells.append(
                {
                    "law": law,
                    "dataset": name,
                    **_score(h["predicted"].to_numpy(), h["observed"].to_numpy()),
                    "seconds": time.perf_counter() - t,
                    "warnings": list(res.warnings),
                }
            )
    return {"datasets": meta, "cells": cells, "seconds": time.perf_counter() - t_all}


def format_table(result: dict) -> str:
    """The law x dataset table (Markdown): held-out RMSE / median |relative error| per cell."""
    names = [m["dataset"] for m in result["datasets"]]
    rows = [BASELINE, *dict.fromkeys(c["law"] for c in result["cells"] if c["law"] != BASELINE)]
    by = {(c["law"], c["dataset"]): c for c in result["cells"]}

    def cell(law, name):
        c = by.get((law, name))
        if c is None:
            return "—"
        if "skipped" in c:
            return "n/a"
        tag = f" ({c['set']})" if "set" in c else ""
        mark = " †" if c.get("warnings") else ""
        return f"{c['rmse']:.4f} / {c['median_abs_rel_error']:.2%}{tag}{mark}"

    head = "| law | " + " | ".join(names) + " |"
    lines = [head, "|" + " --- |" * (len(names) + 1)]
    for law in rows:
        lines.append(f"| {law} | " + " | ".join(cell(law, n) for n in names) + " |")
    held = "; ".join(
        f"{m['dataset']}: {m['n_held_out']} of {m['n_runs']} runs held out ({m['holdout']})"
        for m in result["datasets"]
    )
    lines += ["", f"Cells: held-out RMSE (nats/token) / median |relative error|. {held}."]
    if any(c.get("warnings") for c in result["cells"]):
        lines.append(
            "† the fit warned (e.g. its optimum lies beyond the grid of starts): see --json `warnings`."
        )
    reasons: dict[tuple[str, str], list[str]] = {}
    for c in result["cells"]:
        if "skipped" in c:
            why = c["skipped"].split("; the table has")[0]
            reasons.setdefault((c["law"], why), []).append(c["dataset"])
    if reasons:
        lines += ["", "n/a (the data cannot fit the law):"]
        lines += [f"- {law} on {', '.join(names)}: {why}" for (law, why), names in reasons.items()]
    return "\n".join(lines)
