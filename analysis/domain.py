"""Which runs a law may be fitted and scored on, and how many distinct levels a column really has.

Levels. A sweep asks for nominal values (``axes.granularity: [1, 2, 4]``) and the family rule realises
them within rounding (G = 1.01..1.10 for a nominal 1). ``moelab.sweep.store`` carries each axis's nominal
value into the runs table as ``nominal_<axis>``; :func:`levels` uses it where every run has one, and
otherwise groups the realised values into levels separated by gaps of more than 20%
(:data:`DEFAULT_REL_TOL`, on a log scale; 0.05 for ``shared_ratio``, :data:`LEVEL_TOL`), so rounding noise is
never mistaken for a varied axis.

Domains. A law is fitted only on the runs it describes (:func:`law_domain`):

- a law without an expert term (none of ``n_experts``, ``granularity``, ``shared_ratio``: ``chinchilla``)
  describes one architecture: the dense runs (``n_experts`` 1) when the table mixes architectures, all runs
  when it has one;
- a law without a data term (``clark``: Clark et al. 2022 trained every model on the same tokens) is fitted on
  one token budget: the level of ``tokens`` with the most runs (ties: the larger D).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.laws import Law
from moelab.errors import MoelabError

NOMINAL = "nominal_"  # prefix of the runs table's nominal-axis columns (moelab.sweep.store)
LEVEL_TOL = {"shared_ratio": 0.05}  # absolute tolerance; every other column: relative, DEFAULT_REL_TOL
DEFAULT_REL_TOL = 0.2
ARCH_COLUMNS = ("n_experts", "top_k", "n_shared_experts", "granularity", "shared_ratio")


def _cluster(values: np.ndarray, column: str) -> np.ndarray:
    """Level labels of realised values: sorted values start a new level where the gap to the previous value
    exceeds the column's tolerance (log scale for positive columns); each level is labelled by its median."""
    v = np.asarray(values, np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if not ok.any():
        return out
    absolute = column in LEVEL_TOL
    x = v[ok] if absolute else np.log(np.where(v[ok] > 0, v[ok], np.nan))
    if not absolute and np.isnan(x).any():  # zeros or negatives: fall back to an absolute scale
        x, absolute = v[ok], True
    tol = LEVEL_TOL.get(column, 0.05) if absolute else np.log1p(DEFAULT_REL_TOL)
    order = np.argsort(x, kind="stable")
    labels = np.empty(len(x))
    labels[order] = np.concatenate([[0], np.cumsum(np.diff(x[order]) > tol)])
    # label each level by its median realised value, so a level reads as a value
    vals = v[ok]
    med = {lvl: float(np.median(vals[labels == lvl])) for lvl in np.unique(labels)}
    out[ok] = [med[lvl] for lvl in labels]
    return out


def levels(df: pd.DataFrame, column: str) -> np.ndarray:
    """The level of ``column`` per run: its nominal value (``nominal_<column>``) where every run with a finite
    ``column`` has one, else the realised values grouped by :func:`_cluster`."""
    nom = NOMINAL + column
    real = np.asarray(df[column], np.float64)
    if nom in df.columns:
        n = pd.to_numeric(df[nom], errors="coerce").to_numpy(np.float64)
        if np.all(np.isfinite(n[np.isfinite(real)])):
            return np.where(np.isfinite(real), n, np.nan)
    return _cluster(real, column)


def n_levels(df: pd.DataFrame, column: str) -> int:
    lv = levels(df, column)
    return int(np.unique(lv[np.isfinite(lv)]).size)


def check_variation(df: pd.DataFrame, law: Law) -> None:
    """MoelabError unless every column in ``law.needs_variation`` has at least two distinct levels."""
    for c in law.needs_variation:
        if c not in df.columns:
            continue
        k = n_levels(df, c)
        if k < 2:
            real = np.asarray(df[c], np.float64)
            real = real[np.isfinite(real)]
            span = f"{real.min():.3g}..{real.max():.3g}" if real.size else "none"
            raise MoelabError(
                f"column {c} is constant up to rounding ({k} distinct level, realised {span}); "
                f"law {law.name} needs it to vary over at least 2 levels"
            )


def arch_key(df: pd.DataFrame) -> pd.Series:
    """One label per run naming its architecture (the levels of the expert columns present)."""
    cols = [c for c in ARCH_COLUMNS if c in df.columns]
    if not cols:
        return pd.Series("all", index=df.index)
    parts = []
    for c in cols:
        lv = levels(df, c) if c in ("granularity", "shared_ratio") else np.asarray(df[c], np.float64)
        if c in ("granularity", "shared_ratio", "n_shared_experts", "top_k"):
            dense = np.asarray(df.get("n_experts", pd.Series(2, index=df.index)), np.float64) <= 1
            lv = np.where(dense, np.nan, lv)  # dense runs have no expert shape
        parts.append(pd.Series(lv, index=df.index).map(lambda x: "-" if not np.isfinite(x) else f"{x:g}"))
    out = parts[0].str.cat(parts[1:], sep="/") if len(parts) > 1 else parts[0]
    return out


@dataclass
class Domain:
    """The runs of one table a law is fitted and scored on: ``mask`` (aligned with the table's rows) and a
    sentence saying which they are. Computed once on the whole table, before any split, so a train/held-out
    split of the same rows agrees with it."""

    law: str
    mask: np.ndarray
    rule: str = "all"  # all | dense | level
    text: str = "all runs"

    @property
    def n(self) -> int:
        return int(self.mask.sum())

    def to_dict(self) -> dict:
        return {"rule": self.rule, "text": self.text, "n_runs": self.n}


def law_domain(law: Law, df: pd.DataFrame) -> Domain:
    """The domain of ``law`` on the runs ``df`` (see the module docstring); MoelabError when it is empty."""
    everything = np.ones(len(df), bool)
    if not set(law.columns) & set(ARCH_COLUMNS) and "n_experts" in df.columns:
        archs = arch_key(df)
        if archs.nunique() > 1:
            dense = np.asarray(df["n_experts"], np.float64) == 1
            if not dense.any():
                raise MoelabError(
                    f"law {law.name} has no expert term and the runs mix {archs.nunique()} architectures "
                    "without a dense baseline: fit it on one architecture"
                )
            return Domain(law.name, dense, "dense", f"the {int(dense.sum())} dense runs (n_experts = 1)")
    if "tokens" not in law.columns and "tokens" in df.columns:
        lv = levels(df, "tokens")
        vals, counts = np.unique(lv[np.isfinite(lv)], return_counts=True)
        if len(vals) > 1:
            count, level = max(zip(counts, vals, strict=True))  # most runs, then the larger D
            return Domain(
                law.name,
                lv == level,
                "level",
                f"the {int(count)} runs at D = {level:.3g} tokens (the law has no data term)",
            )
    return Domain(law.name, everything)
