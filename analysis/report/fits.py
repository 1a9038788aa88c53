"""The report's view of the analysis package. Every number comes from ``analysis``: the ranking of the laws
on one stratified held-out split (:func:`analysis.validate.rank_laws`, the same call as ``moelab fit
--compare``), the IsoFLOP fit (:func:`analysis.isoflop.fit_isoflop`), the frontier
(:func:`analysis.frontier.frontier`) and the extrapolation (:func:`analysis.extrapolate.extrapolate`). This
module only gathers their results into the plain tables the figures, the text and fits.json need.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.compare import EXPONENTS
from analysis.convention import WITH_EMBEDDING, convention_shift
from analysis.domain import levels
from analysis.extrapolate import extrapolate, paper_allocation
from analysis.frontier import fit_cost, frontier
from analysis.isoflop import fit_isoflop, isoflop_minima
from analysis.laws import LAWS
from analysis.validate import HOLDOUT_FRACTION, Ranking, rank_laws
from moelab.errors import MoelabError
from moelab.presets import PAPER_FACTS

__all__ = ["Analysis", "LawSummary", "analyse"]

DEFAULT_BOOT = 100  # bootstrap resamples for the report's intervals (``moelab report --bootstrap N``)
N_CONVENTION = (
    "N is the activated non-embedding parameter count (runs table column active_params, from "
    "moelab.accounting.param_counts): the token embedding and the output projection are left out"
)


@dataclass
class LawSummary:
    """One law's row of the ranking, with its parameters and their bootstrap intervals."""

    name: str
    formula: str
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    on_bound: list[str]
    domain: str
    n_fit: int
    n_heldout: int
    heldout_err: float | None  # mean |predicted - observed| / observed on the held-out runs
    heldout_interval: tuple[float, float] | None
    heldout_median: float | None
    heldout_max: float | None
    train_err: float | None
    ranked: bool
    not_ranked: str | None

    def to_json(self) -> dict:
        return {
            "formula": self.formula,
            "params": self.params,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "on_bound": self.on_bound,
            "domain": self.domain,
            "n_fit": self.n_fit,
            "n_heldout": self.n_heldout,
            "heldout_mean_abs_rel_err": self.heldout_err,
            "heldout_interval": None if self.heldout_interval is None else list(self.heldout_interval),
            "heldout_median_abs_rel_err": self.heldout_median,
            "heldout_max_abs_rel_err": self.heldout_max,
            "train_mean_abs_rel_err": self.train_err,
            "ranked": self.ranked,
            "not_ranked": self.not_ranked,
        }


@dataclass
class Analysis:
    ranking: Ranking | None = None
    laws: list[LawSummary] = field(default_factory=list)
    best: str | None = None
    heldout_ids: list[str] = field(default_factory=list)
    predictions: pd.DataFrame | None = None  # law, run_id, observed, predicted, heldout (each law's domain)
    frontier: pd.DataFrame | None = None  # analysis.frontier.frontier over the sweep's compute
    frontier_far: pd.DataFrame | None = None  # carried to the target's compute, the paper's law beside it
    isoflop_minima: pd.DataFrame | None = None  # analysis.isoflop.isoflop_minima
    isoflop: object | None = None  # IsoFlopResult, C from the runs' own accounting
    isoflop_paper: object | None = None  # IsoFlopResult, C in the target paper's compute model
    isoflop_points: pd.DataFrame | None = None  # C (paper's model), N_opt, D_opt of the minima
    extrapolation: dict | None = None
    clark_tokens: float | None = None  # the token budget Clark's law was fitted on
    notes: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)  # law name -> analysis.fitting.FitResult (fit split)
    scope: dict = field(default_factory=dict)  # spans of the runs, for the report's words
    n_convention: dict = field(default_factory=dict)
    n_boot: int | None = None  # bootstrap resamples asked for (None: each analysis's default)
    extra: dict = field(default_factory=dict)  # fits.json entries of other sections (e.g. hyper)

    def to_json(self) -> dict:
        def records(df):
            return None if df is None else df.to_dict(orient="records")

        iso = {}
        for key, res in (("isoflop", self.isoflop), ("isoflop_paper_compute", self.isoflop_paper)):
            if res is not None:
                iso[key] = res.to_dict()
        return {
            "best_law": self.best,
            "ranking": None if self.ranking is None else self.ranking.to_dict(),
            "laws": {law.name: law.to_json() for law in self.laws},
            "heldout_run_ids": self.heldout_ids,
            "predictions": records(self.predictions),
            "frontier": records(self.frontier),
            "extrapolation": {k: v for k, v in (self.extrapolation or {}).items() if k != "rows"} or None,
            **iso,
            "scope": self.scope,
            "n_convention": self.n_convention,
            "notes": self.notes,
        }


def _summaries(r: Ranking) -> list[LawSummary]:
    out = []
    for t in r.table.to_dict(orient="records"):
        res = r.results.get(t["law"])
        if res is None:
            continue
        h = res.holdout

        def num(k, t=t):
            v = t.get(k)
            return None if v is None or not np.isfinite(v) else float(v)

        iv = (num("held_out_lo"), num("held_out_hi"))
        out.append(
            LawSummary(
                name=t["law"],
                formula=res.law.title,
                params=dict(res.params),
                intervals={k: (float(a), float(b)) for k, (a, b) in (res.intervals or {}).items()},
                on_bound=list(res.on_bound),
                domain=t["domain"],
                n_fit=res.n_points,
                n_heldout=0 if h is None else len(h.table),
                heldout_err=num("held_out_mean_abs_rel_error"),
                heldout_interval=None if iv[0] is None else iv,
                heldout_median=num("held_out_median_abs_rel_error"),
                heldout_max=num("held_out_max_abs_rel_error"),
                train_err=num("train_mean_abs_rel_error"),
                ranked=bool(t.get("ranked")),
                not_ranked=t.get("not_ranked") if isinstance(t.get("not_ranked"), str) else None,
            )
        )
    return out


def _predictions(r: Ranking, ok: pd.DataFrame) -> pd.DataFrame | None:
    """Each law's predictions of the runs of its own domain (observed, predicted, held out or not)."""
    held = ok["run_id"].isin(r.heldout_ids).to_numpy()
    frames = []
    for name, res in r.results.items():
        m = (
            res.domain.mask
            if res.domain is not None and len(res.domain.mask) == len(ok)
            else np.ones(len(ok), bool)
        )
        sub = ok[m]
        frames.append(
            pd.DataFrame(
                {
                    "law": name,
                    "run_id": sub["run_id"].to_numpy(),
                    "observed": sub["loss"].to_numpy(dtype=float),
                    "predicted": np.asarray(res.predict(sub), dtype=float),
                    "heldout": held[m],
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else None


def analyse(
    data,
    *,
    target: str = "hunyuan-large",
    n_boot: int | None = None,
    max_starts: int | None = None,
    laws: list[str] | None = None,
    fraction: float = HOLDOUT_FRACTION,
) -> Analysis:
    """Rank every registered law the data supports on one stratified held-out split (with ``n_boot``
    bootstrap resamples per law), fit the IsoFLOP profiles, and carry the best law with a data term to
    ``target``. Returns an Analysis with only notes when nothing can be fitted."""
    an = Analysis()
    ok = data.ok.reset_index(drop=True)
    an.n_boot = n_boot
    n_boot = DEFAULT_BOOT if n_boot is None else int(n_boot)
    an.scope = _scope(ok)
    an.n_convention = _n_convention(ok)
    names = list(LAWS) if laws is None else list(laws)
    names = [n for n in names if all(c in ok for c in LAWS[n].columns)]
    if names and len(ok) >= 2:
        r = rank_laws(ok, names, fraction=fraction, bootstrap=n_boot, max_starts=max_starts)
        an.ranking, an.best, an.heldout_ids = r, r.best, list(r.heldout_ids)
        an.results = dict(r.results)
        an.laws = _summaries(r)
        an.predictions = _predictions(r, ok)
        an.notes += [f"{k}: not fitted ({v})." for k, v in r.skipped.items()] + list(r.notes)
        for name, res in r.results.items():
            an.notes += [w if w.startswith(name) else f"{name}: {w}" for w in res.warnings]
        _convention(an, ok, max_starts)
        clark = r.results.get("clark")
        if clark is not None and clark.domain is not None and len(clark.domain.mask) == len(ok):
            lv = levels(ok, "tokens")[clark.domain.mask]
            an.clark_tokens = float(lv[0]) if clark.domain.rule == "level" else float(np.median(lv))
    _isoflop(an, ok, target, n_boot)
    _frontier_and_extrapolation(an, ok, target)
    return an


def _scope(ok: pd.DataFrame) -> dict:
    """The spans the runs cover (for the report's words)."""
    if ok.empty:
        return {}
    moe = ok["n_experts"] > 1 if "n_experts" in ok else pd.Series(False, index=ok.index)

    def span(col):
        v = ok[col].to_numpy(dtype=float)
        return [float(v.min()), float(v.max())]

    out = {
        "n_runs": int(len(ok)),
        "n_dense": int((~moe).sum()),
        "n_moe": int(moe.sum()),
        "N": span("active_params"),
        "D": span("tokens"),
        "C": span("flops"),
    }
    if moe.any():
        out["experts"] = sorted(int(e) for e in ok.loc[moe, "n_experts"].unique())
    return out


def _n_convention(ok: pd.DataFrame) -> dict:
    """What the N convention is, and how much the embedding would add at these sizes."""
    out = {"text": N_CONVENTION}
    if {"active_params", "active_params_with_embedding"} <= set(ok.columns) and len(ok):
        share = 1 - ok["active_params"].astype(float) / ok["active_params_with_embedding"].astype(float)
        out["embedding_share"] = [float(share.min()), float(share.max())]
    return out


def _convention(an: Analysis, ok: pd.DataFrame, max_starts: int | None) -> None:
    """The best law refitted with N counting the embedding: its exponents' shifts beside their intervals."""
    res = an.results.get(an.best)
    if res is None or res.bootstrap is None or WITH_EMBEDDING not in ok.columns:
        return
    try:
        shift = convention_shift(res, ok, max_starts=max_starts)
    except MoelabError as exc:
        an.notes.append(f"N-convention check not run ({str(exc).splitlines()[0]}).")
        return
    names = EXPONENTS.get(an.best, ())
    shift = shift[shift["parameter"].isin(names)] if names else shift
    an.n_convention["law"] = an.best
    an.n_convention["shift"] = shift.to_dict(orient="records")


def _isoflop(an: Analysis, ok: pd.DataFrame, target: str, n_boot: int) -> None:
    """IsoFLOP minima and, where >= 2 budgets allow, N_opt ~ C^a and D_opt ~ C^b with intervals: on the runs'
    own compute and on the target paper's compute model (the one its allocation law was fitted on)."""
    if len(ok) < 3:
        return
    an.isoflop_minima = isoflop_minima(ok)
    if an.isoflop_minima.empty:
        an.isoflop_minima = None
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            an.isoflop = fit_isoflop(ok, bootstrap=n_boot)
        except MoelabError as exc:
            an.notes.append(f"isoflop: no power law ({str(exc).splitlines()[0]}).")
            return
        if target in PAPER_FACTS:
            an.isoflop_paper = fit_isoflop(ok, bootstrap=n_boot, compute=target)
            m = an.isoflop_minima[an.isoflop_minima["inside"]]
            c = paper_allocation(target, m["N_opt"].to_numpy(), m["D_opt"].to_numpy())["compute"]
            an.isoflop_points = pd.DataFrame({"C": c, "N_opt": m["N_opt"], "D_opt": m["D_opt"]})


def _knobs(law, row: dict) -> dict:
    return {c: row[c] for c in law.columns if c not in ("active_params", "tokens")}


def _masked_frontier(res, C, compute, knobs) -> pd.DataFrame:
    """analysis.frontier.frontier with minima on the edge of its N grid blanked (no interior optimum)."""
    fr = frontier(res, C, compute=compute, config=knobs)
    if "on_edge" in fr:
        cols = [c for c in fr.columns if c not in ("C", "on_edge")]
        fr.loc[fr["on_edge"].astype(bool), cols] = np.nan
    return fr


def _frontier_and_extrapolation(an: Analysis, ok: pd.DataFrame, target: str) -> None:
    """The best law with a data term (N and D): its frontier over the sweep's compute (the runs' own cost per
    token) and its extrapolation to ``target`` (:func:`analysis.extrapolate.extrapolate`), with the frontier
    carried to the target's compute in the paper's compute model beside the paper's allocation law."""
    cands = [x for x in an.laws if {"active_params", "tokens"} <= set(an.results[x.name].law.columns)]
    if not cands:
        return
    names = [x.name for x in cands]
    ranked = [x for x in cands if x.ranked]
    best = an.best if an.best in names else (ranked or cands)[0].name
    res = an.results[best]
    dom = (
        res.domain.mask
        if res.domain is not None and len(res.domain.mask) == len(ok)
        else np.ones(len(ok), bool)
    )
    runs = ok[dom]
    knobs = _knobs(res.law, runs.loc[runs["loss"].idxmin()].to_dict())
    c_lo, c_hi = float(ok["flops"].min()), float(ok["flops"].max())
    an.frontier = _masked_frontier(res, np.geomspace(c_lo / 1.5, c_hi * 1.5, 40), fit_cost(runs), knobs)
    an.frontier.attrs["law"] = best
    try:
        ex = extrapolate(res, target)
    except MoelabError as exc:
        an.notes.append(f"No extrapolation to {target}: {str(exc).splitlines()[0]}")
        return
    decades = float(np.log10(ex["compute_accounting"] / c_hi))
    rows = [
        {"quantity": "activated parameters N (non-embedding)", "value": f"{ex['active_params']:.3g}"},
        {"quantity": "total parameters (non-embedding)", "value": f"{ex['total_params']:.3g}"},
        {"quantity": "training tokens D", "value": f"{ex['tokens']:.3g}"},
        {
            "quantity": f"training compute by moelab.accounting (seq_len {ex['seq_len']}), FLOPs",
            "value": f"{ex['compute_accounting']:.3g}",
        },
    ]
    notes = []
    if "compute_paper" in ex:
        far = np.geomspace(c_lo, ex["compute_paper"] * 30, 60)
        an.frontier_far = _masked_frontier(res, far, target, ex["config"])
        paper = paper_allocation(target, compute=far)
        an.frontier_far["paper_N_opt"], an.frontier_far["paper_D_opt"] = paper["N_opt"], paper["D_opt"]
        an.frontier_far.attrs["paper"] = ex["paper_source"]
        fitted = ex.get("fitted_law", {})
        rows += [
            {
                "quantity": f"training compute by the paper's own model ({ex['paper_source']}), FLOPs",
                "value": f"{ex['compute_paper']:.3g}",
            },
            {
                "quantity": "compute-optimal N at that compute: this sweep's law / the paper's law",
                "value": f"{fitted.get('N_opt', np.nan):.3g} / {ex['paper_law']['N_opt']:.3g}",
            },
            {
                "quantity": "compute-optimal D at that compute: this sweep's law / the paper's law",
                "value": f"{fitted.get('D_opt', np.nan):.3g} / {ex['paper_law']['D_opt']:.3g}",
            },
        ]
        notes.append(
            "The allocation comparison uses the paper's own compute model for both laws, the model its "
            "allocation law was fitted on; the sweep's own points use moelab.accounting."
        )
    lo, hi = ex.get("loss_interval", (None, None))
    an.extrapolation = {
        "name": target,
        "law": best,
        "active_params": ex["active_params"],
        "total_params": ex["total_params"],
        "tokens": ex["tokens"],
        "flops": ex.get("compute_paper", ex["compute_accounting"]),
        "flops_moelab": ex["compute_accounting"],
        "loss": ex["loss"],
        "loss_lo": lo,
        "loss_hi": hi,
        "n_bootstrap": 0 if res.bootstrap is None else res.bootstrap.n,
        "decades": round(decades, 1),
        "knobs": ex["config"],
        "on_bound": list(res.on_bound),
        "analysis": ex,
        "rows": rows,
        "notes": notes
        + [
            f"N = {ex['active_params']:.3g} activated non-embedding parameters "
            f"({ex['total_params']:.3g} total) and D = {ex['tokens']:.3g} tokens; the law was fitted to all "
            "runs of its domain but the held-out ones. " + ex["warning"].capitalize() + "."
        ]
        + ([] if lo is not None else ["No bootstrap was run, so the extrapolated loss has no interval."]),
    }
