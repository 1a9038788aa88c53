"""How much a law's parameters move when N counts the embedding: the N-convention check of a fit.

The laws use N = ``active_params``, the activated non-embedding count. At small sizes the embedding and
output layer are a large share of the parameters, so the choice can move fitted exponents (Pearce & Song 2024;
Porian et al. 2024). :func:`convention_shift` refits a law on exactly the runs of an existing fit with N taken
from another column (``active_params_with_embedding``) and sets each parameter's shift beside the width of its
bootstrap interval: a shift inside the interval means the runs cannot tell the two conventions apart.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.fit import fit
from analysis.fitting import FitResult
from moelab.errors import MoelabError

WITH_EMBEDDING = "active_params_with_embedding"


def convention_shift(
    res: FitResult, runs: pd.DataFrame, column: str = WITH_EMBEDDING, *, max_starts: int | None = None
) -> pd.DataFrame:
    """Per parameter of ``res``: the value, the value refitted with N = ``column`` on the same runs
    (``runs`` is the table ``res`` was fitted from; its rows are ``res.data.index``), the shift, and the 95%
    interval of the original (NaN without a bootstrap)."""
    if column not in runs.columns:
        raise MoelabError(f"no column {column} to refit with")
    rows = runs.loc[res.data.index]
    alt = rows.assign(active_params=pd.to_numeric(rows[column], errors="coerce"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an alternative fit's warnings are its own business here
        other = fit(alt, res.law, delta=res.delta, max_starts=max_starts)
    iv = res.intervals or {}
    out = []
    for k, v in res.params.items():
        lo, hi = iv.get(k, (np.nan, np.nan))
        out.append(
            {
                "parameter": k,
                "value": float(v),
                "with_embedding": float(other.params[k]),
                "shift": float(other.params[k] - v),
                "lo": float(lo),
                "hi": float(hi),
                "inside": bool(lo <= other.params[k] <= hi) if np.isfinite(lo) else None,
            }
        )
    return pd.DataFrame(out)
