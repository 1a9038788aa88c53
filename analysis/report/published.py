"""The report's "Published laws beside fitted" section: the coefficient sets of :mod:`analysis.published`
(Hoffmann, Epoch, Krajewski, Ludziejewski, Clark, Hunyuan-Large's allocation law) evaluated on the same runs
as the fitted laws, and every exponent side by side with the fitted ones' bootstrap intervals.

All numbers come from :mod:`analysis.compare`; this module only lays them out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.compare import applicable, exponent_rows, exponent_table, predict_published
from analysis.published import PUBLISHED
from analysis.report.render import Section
from moelab.presets import paper_facts

_HY = paper_facts("hunyuan-large")

__all__ = ["published_errors", "published_section", "published_table"]


def _pct(v) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.2%}"


def published_errors(ok: pd.DataFrame, heldout_ids) -> list[dict]:
    """Every published set that can predict the runs ``ok``: mean |relative error| on the held-out runs
    (None when none are held out) and on all runs."""
    is_ho = ok["run_id"].isin(list(heldout_ids)).to_numpy()
    obs = ok["loss"].to_numpy(dtype=float)
    out = []
    for pub in PUBLISHED.values():
        if applicable(pub, ok) is not None:
            continue
        rel = np.abs(predict_published(pub, ok) / obs - 1)
        out.append(
            {
                "set": pub.key,
                "law": pub.law,
                "citation": pub.citation,
                "heldout_mean_abs_rel_err": float(rel[is_ho].mean()) if is_ho.any() else None,
                "all_mean_abs_rel_err": float(rel.mean()),
            }
        )
    return out


def published_table(ok: pd.DataFrame, heldout_ids, laws) -> pd.DataFrame:
    """Mean |relative error| of every applicable published set on the held-out runs and on all runs, below
    the fitted laws' (``laws``: the report's LawSummary list)."""
    rows = [
        {
            "law": s.name,
            "coefficients": "fitted here",
            "held-out mean |rel. error|": _pct(s.heldout_err),
            "all runs mean |rel. error|": "—",
            "source": "this sweep",
        }
        for s in laws
    ]
    for e in published_errors(ok, heldout_ids):
        rows.append(
            {
                "law": e["law"],
                "coefficients": f"published: {e['set']}",
                "held-out mean |rel. error|": _pct(e["heldout_mean_abs_rel_err"]),
                "all runs mean |rel. error|": _pct(e["all_mean_abs_rel_err"]),
                "source": e["citation"],
            }
        )
    return pd.DataFrame(rows)


def published_section(ok: pd.DataFrame, an) -> tuple[Section | None, dict]:
    """(the section, its numbers for fits.json); the section is None when no law was fitted and no
    published set applies to the runs."""
    table = published_table(ok, an.heldout_ids, an.laws)
    exps = exponent_rows(an.results)
    numbers = {"sets": published_errors(ok, an.heldout_ids), "exponents": exps}
    if not any(table["coefficients"].str.startswith("published")) and not exps:
        return None, numbers
    tables = [("Published coefficient sets on these runs (no parameter refitted)", table)]
    if exps:
        tables.append(
            ("Exponents: fitted (95% bootstrap interval) beside the published values", exponent_table(exps))
        )
    section = Section(
        "published",
        "Published laws beside the fitted ones",
        "Each published law predicts these runs with its paper's coefficients; its exponents sit beside the "
        "fitted ones and their intervals: a fitted exponent far from every published one is a finding to "
        "explain before it is trusted.",
        tables=tables,
        notes=[
            "A published set was fitted to its paper's corpus, tokenizer and parameter count (some count "
            "embeddings): a constant offset in loss is expected, so compare exponents rather than absolute "
            "errors.",
            "Allocation exponents (N_opt ∝ C^n, D_opt ∝ C^d) follow from C = 6ND; Hunyuan-Large's law was "
            f"fitted with its own compute model (C = {_HY.compute_coef:g} N D + "
            f"{_HY.compute_per_token:.2g} D).",
        ],
    )
    return section, numbers
