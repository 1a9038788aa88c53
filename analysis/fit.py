"""``fit(df, law)``: fit a law to a runs table, with bootstrap intervals on request.

The entry point of the analysis: it picks the law's domain of the runs (:mod:`analysis.domain`), validates
them (:func:`analysis.fitting.prepare`), fits from every start of the law's grid
(:func:`analysis.fitting.fit_arrays`) and, with ``bootstrap=B``, refits B resamples
(:mod:`analysis.bootstrap`).
``law="isoflop"`` runs Chinchilla's Approach 2 instead (:mod:`analysis.isoflop`). It sits above those
modules, which import only :mod:`analysis.fitting` (docs/analysis.md, "Layers").
"""

from __future__ import annotations

from analysis.bootstrap import bootstrap as run_bootstrap
from analysis.domain import law_domain
from analysis.fitting import DELTA, FitResult, fit_arrays, prepare
from analysis.isoflop import IsoFlopResult, fit_isoflop
from analysis.laws import Law, get_law


def fit(
    df,
    law: Law | str = "chinchilla",
    *,
    delta: float = DELTA,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    max_starts: int | None = None,
    loss_col: str = "loss",
) -> FitResult | IsoFlopResult:
    """Fit ``law`` to a runs DataFrame (see :func:`analysis.load_runs`).

    The law is fitted on its domain of the runs (:func:`analysis.domain.law_domain`: Chinchilla's law on the
    dense runs of a table that mixes architectures, Clark's on one token budget); ``res.domain`` says which.
    ``law='isoflop'`` runs Chinchilla's Approach 2 instead (:func:`analysis.isoflop.fit_isoflop`).
    With ``bootstrap=B`` the law is refitted to B resamples of the runs (:func:`analysis.bootstrap.bootstrap`)
    and the result carries standard errors and percentile intervals at ``confidence``.
    """
    if law == "isoflop":
        return fit_isoflop(df, bootstrap=bootstrap, confidence=confidence, seed=seed, loss_col=loss_col)
    law = get_law(law)
    dom = law_domain(law, df)
    res = fit_arrays(law, prepare(df[dom.mask], law, loss_col), delta=delta, max_starts=max_starts)
    res.domain = dom
    if bootstrap:
        res.bootstrap = run_bootstrap(res, bootstrap, confidence=confidence, seed=seed)
    return res
