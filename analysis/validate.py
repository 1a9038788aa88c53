"""Held-out validation: fit on the lower-compute runs, predict the highest-compute ones, rank the laws.

A law is only as good as its extrapolation, so laws are compared by their error on held-out runs at the top of
the compute range, not by their fit error (which always favours more parameters). The top of the range is
held out *per stratum* (dense and MoE runs alike, :func:`split_by_compute`), so a ranking is never decided by
the dense runs alone. Each law is fitted and scored on its own domain (:func:`analysis.domain.law_domain`:
Chinchilla's law on the dense runs of a mixed sweep, Clark's on one token budget); only laws whose domain
covers every held-out run compete for "best". The held-out error carries a bootstrap interval: held-out runs
resampled with replacement within their strata, predicted by the fit's bootstrap parameter samples where
there are some (:class:`Holdout`).

:func:`rank_laws` is the one code path behind ``moelab fit --compare`` and ``moelab report``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.domain import Domain, law_domain
from analysis.fit import fit
from analysis.fitting import DELTA, FitResult, Holdout
from analysis.laws import get_law
from analysis.load import compute_of
from moelab.errors import MoelabError

HOLDOUT_FRACTION = 0.3  # the top 30% of compute, per stratum, is held out (fit below the 70th percentile)
MIN_POINTS_PER_PARAM = 2  # a law needs this many fit points per parameter to be ranked
MIN_KEEP = 6  # a stratum holds runs out only if it keeps this many in the fit (Chinchilla's 5 parameters + 1)
N_RESAMPLE = 1000  # resamples of the held-out runs for the error's interval
DEFAULT_LAWS = ("chinchilla", "granularity", "clark", "joint_moe", "shared_ratio")


def strata(df: pd.DataFrame) -> np.ndarray:
    """``dense`` or ``moe`` per run (by ``n_experts``), ``all`` for a table without expert counts."""
    if "n_experts" not in df.columns:
        return np.full(len(df), "all", dtype=object)
    e = np.asarray(df["n_experts"], np.float64)
    return np.where(e > 1, "moe", "dense").astype(object)


def heldout_mask(
    df: pd.DataFrame, fraction: float | None = HOLDOUT_FRACTION, threshold: float | None = None
) -> np.ndarray:
    """Which runs are held out: compute >= ``threshold``, or in each stratum (dense, MoE) the runs at or above
    the compute of its ``round(fraction * n)``-th largest run (ties at that compute are held out together;
    a stratum that would keep fewer than :data:`MIN_KEEP` runs in the fit holds none out)."""
    C = compute_of(df)
    if threshold is not None:
        test = float(threshold) <= C
    else:
        if fraction is None or not 0 < fraction < 1:
            raise MoelabError(f"holdout fraction must be in (0, 1), got {fraction}")
        test = np.zeros(len(df), bool)
        lab = strata(df)
        for s in np.unique(lab):
            idx = np.flatnonzero(lab == s)
            k = int(round(fraction * len(idx)))
            if k < 1:
                continue
            cut = np.sort(C[idx])[-k]
            held = C[idx] >= cut
            if (~held).sum() >= MIN_KEEP:
                test[idx[held]] = True
    if test.all() or not test.any():
        n_train, n_test = int((~test).sum()), int(test.sum())
        raise MoelabError(f"holdout leaves {n_train} training and {n_test} held-out runs; both must be > 0")
    return test


def default_split(df: pd.DataFrame, fraction: float | None = HOLDOUT_FRACTION) -> dict:
    """How a table's largest runs are held out, as keyword arguments of :func:`heldout_mask`: every run at the
    largest N when all runs share one token count (at fixed D, compute orders runs by N), else the top
    ``fraction`` of compute per stratum. ``moelab fit --compare`` and ``moelab report`` both use it."""
    tokens = np.asarray(df["tokens"], dtype=np.float64)
    if len(tokens) and np.ptp(tokens) == 0:
        C = compute_of(df)
        N = np.asarray(df["active_params"], dtype=np.float64)
        largest = np.isclose(N, N.max(), rtol=1e-12)
        return {"fraction": None, "threshold": float(C[largest].min())}
    return {"fraction": fraction, "threshold": None}


def split_by_compute(
    df: pd.DataFrame, fraction: float | None = HOLDOUT_FRACTION, threshold: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held_out) by :func:`heldout_mask`."""
    test = heldout_mask(df, fraction, threshold)
    return df[~test], df[test]


def error_interval(
    obs: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    samples: np.ndarray | None = None,
    *,
    n_resample: int = N_RESAMPLE,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean |predicted / observed - 1| over the held-out runs: each resample draws
    the runs with replacement within their ``groups`` (strata) and, when ``samples`` [S, n] (predictions of
    the fit's bootstrap parameter samples) are given, one parameter sample, so the interval holds both the
    choice of held-out runs and the fit's own uncertainty."""
    rng = np.random.default_rng(seed)
    n = len(obs)
    idx = np.empty((n_resample, n), dtype=np.int64)
    col = 0
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        idx[:, col : col + len(members)] = rng.choice(members, size=(n_resample, len(members)))
        col += len(members)
    if samples is not None and len(samples):
        ok = np.all(np.isfinite(samples), axis=1)
        samples = samples[ok] if ok.any() else pred[None]
        P = samples[rng.integers(0, len(samples), n_resample)]  # [R, n]
    else:
        P = np.broadcast_to(pred, (n_resample, n))
    err = np.mean(np.abs(np.take_along_axis(P, idx, 1) / obs[idx] - 1.0), axis=1)
    q = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(err, [q, 100 - q])
    return float(lo), float(hi)


def _score(res: FitResult, test: pd.DataFrame, n_train: int, seed: int, confidence: float) -> Holdout:
    test = test[np.isfinite(test["loss"].to_numpy(dtype=np.float64))]
    obs = test["loss"].to_numpy(dtype=np.float64)
    pred = np.asarray(res.predict(test), np.float64)
    ids = test["run_id"].astype(str).to_numpy() if "run_id" in test.columns else test.index.astype(str)
    lab = strata(test)
    table = pd.DataFrame(
        {
            "run_id": ids,
            "stratum": lab,
            "compute": compute_of(test),
            "observed": obs,
            "predicted": pred,
            "rel_error": pred / obs - 1,
        }
    )
    h = Holdout(law=res.law.name, table=table, n_train=n_train, confidence=confidence)
    if len(obs):
        samples = None
        if res.bootstrap is not None:
            samples = np.asarray(res.law.predict(res.bootstrap.samples, res.law.features(test)), np.float64)
        h.interval = error_interval(obs, pred, lab, samples, confidence=confidence, seed=seed)
        h.interval_basis = f"{N_RESAMPLE} resamples of the held-out runs within strata" + (
            f", each with one of {res.bootstrap.n} bootstrap fits" if samples is not None else ""
        )
    return h


def _fit_split(df, law, test_mask, *, delta, bootstrap, seed, max_starts, confidence) -> FitResult:
    """Fit ``law`` on its domain's training runs and score it on its domain's held-out runs."""
    dom = law_domain(law, df)
    train = df[dom.mask & ~test_mask]
    test = df[dom.mask & test_mask]
    res = fit(train, law, delta=delta, bootstrap=bootstrap, seed=seed, max_starts=max_starts)
    res.domain = dom
    res.holdout = _score(res, test, len(train), seed, confidence)
    return res


def holdout(
    df: pd.DataFrame,
    law="chinchilla",
    *,
    fraction: float | None = HOLDOUT_FRACTION,
    threshold: float | None = None,
    delta: float = DELTA,
    bootstrap: int = 0,
    seed: int = 0,
    max_starts: int | None = None,
    confidence: float = 0.95,
) -> FitResult:
    """Fit ``law`` on all but the highest-compute runs of each stratum (within the law's domain); the
    result's ``holdout`` scores the held-out ones, with a bootstrap interval of the mean error."""
    law = get_law(law)
    df = df.reset_index(drop=True)
    test = heldout_mask(df, fraction, threshold)
    opts = {"delta": delta, "bootstrap": bootstrap, "seed": seed, "max_starts": max_starts}
    return _fit_split(df, law, test, confidence=confidence, **opts)


@dataclass
class Ranking:
    """Every law fitted on one split and ranked by held-out error (:func:`rank_laws`)."""

    table: pd.DataFrame
    results: dict[str, FitResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    best: str | None = None
    basis: str = "held-out"  # how ``best`` was chosen: held-out | in-sample | none
    heldout_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fraction: float | None = HOLDOUT_FRACTION
    threshold: float | None = None

    def heldout_rows(self, df: pd.DataFrame) -> pd.DataFrame:
        """The held-out runs of ``df`` (the table the ranking was made on)."""
        df = df.reset_index(drop=True)
        return df[_ids(df).isin(self.heldout_ids).to_numpy()]

    def to_dict(self) -> dict:
        return {
            "compare": self.table.to_dict(orient="records"),
            "best": self.best,
            "basis": self.basis,
            "heldout_run_ids": self.heldout_ids,
            "holdout_fraction": self.fraction,
            "holdout_threshold": self.threshold,
            "notes": self.notes,
        }


def rank_laws(
    df: pd.DataFrame,
    laws=DEFAULT_LAWS,
    *,
    fraction: float | None = HOLDOUT_FRACTION,
    threshold: float | None = None,
    delta: float = DELTA,
    bootstrap: int = 0,
    seed: int = 0,
    max_starts: int | None = None,
    confidence: float = 0.95,
) -> Ranking:
    """Fit each law on one stratified split (:func:`heldout_mask`) and rank them by held-out mean |relative
    error|. A law is ranked when its domain covers every held-out run and it has at least
    :data:`MIN_POINTS_PER_PARAM` fit points per parameter; the others are listed with their errors and the
    reason. Laws the data cannot support are listed with the reason (missing or constant column, too few
    runs). With no runs held out, nothing is ranked."""
    df = df.reset_index(drop=True)
    out = Ranking(table=pd.DataFrame(), fraction=fraction, threshold=threshold)
    try:
        test = heldout_mask(df, fraction, threshold)
    except MoelabError as exc:
        test = None
        out.notes.append(f"No runs held out ({str(exc).splitlines()[0]}): no law can be ranked.")
    if test is not None:
        out.heldout_ids = list(_ids(df)[test])
    rows = []
    for name in laws:
        law = get_law(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # FitWarnings are kept on the result (res.warnings)
                if test is None:
                    res = fit(df, law, delta=delta, bootstrap=bootstrap, seed=seed, max_starts=max_starts)
                else:
                    res = _fit_split(
                        df, law, test, delta=delta, bootstrap=bootstrap, seed=seed, max_starts=max_starts,
                        confidence=confidence,
                    )  # fmt: skip
        except MoelabError as exc:
            out.skipped[law.name] = str(exc).splitlines()[0]
            rows.append({"law": law.name, "n_params": law.n_params, "skipped": out.skipped[law.name]})
            continue
        out.results[law.name] = res
        rows.append(_row(res, test, df))
    table = pd.DataFrame(rows)
    if "ranked" in table:
        table["ranked"] = table["ranked"].astype("boolean").fillna(False).astype(bool)
        group = np.where(table["ranked"], 0, np.where(table["skipped"].isna(), 1, 2))
        err = table.get("held_out_mean_abs_rel_error", pd.Series(0.0, index=table.index)).fillna(np.inf)
        table = table.assign(_k=group, _e=err).sort_values(["_k", "_e"], kind="stable")
        table = table.drop(columns=["_k", "_e"]).reset_index(drop=True)
        ranked = table[table["ranked"]]
        if len(ranked):
            out.best = str(ranked["law"].iloc[0])
        for r in table.itertuples():
            if not r.ranked and isinstance(r.not_ranked, str):
                out.notes.append(f"{r.law}: not ranked ({r.not_ranked}).")
    if out.best is None:
        out.basis = "none"
        if out.results and test is None:
            errs = {n: _in_sample_error(r) for n, r in out.results.items()}
            out.best = min(errs, key=errs.get)
            out.basis = "in-sample"
            out.notes.append("No runs were held out: the best law is the best in-sample fit.")
    out.table = table
    return out


def _ids(df: pd.DataFrame) -> pd.Series:
    return df["run_id"].astype(str) if "run_id" in df.columns else pd.Series(df.index.astype(str))


def _in_sample_error(res: FitResult) -> float:
    pred = res.law.predict(res.params, res.data.X)
    return float(np.mean(np.abs(pred / res.data.loss - 1)))


def _row(res: FitResult, test: np.ndarray | None, df: pd.DataFrame) -> dict:
    law = res.law
    dom: Domain | None = getattr(res, "domain", None)
    row = {
        "law": law.name,
        "n_params": law.n_params,
        "domain": dom.text if dom is not None else "all runs",
        "n_train": res.n_points,
        "train_mean_abs_rel_error": _in_sample_error(res),
        "train_objective": res.objective,
        "on_bound": ", ".join(res.on_bound) or None,
        "skipped": None,
    }
    h = res.holdout
    if h is None or test is None:
        row.update(ranked=False, not_ranked="no runs held out")
        return row
    iv = h.interval or (np.nan, np.nan)
    row.update(
        n_held_out=len(h.table),
        held_out_mean_abs_rel_error=h.mean_abs_rel_error if len(h.table) else np.nan,
        held_out_lo=iv[0],
        held_out_hi=iv[1],
        held_out_median_abs_rel_error=h.median_abs_rel_error if len(h.table) else np.nan,
        held_out_max_abs_rel_error=h.max_abs_rel_error if len(h.table) else np.nan,
        held_out_rmse=h.rmse if len(h.table) else np.nan,
    )
    reason = None
    if len(h.table) < int(test.sum()):
        reason = f"scored on {len(h.table)} of the {int(test.sum())} held-out runs: fitted on {row['domain']}"
    elif res.n_points < MIN_POINTS_PER_PARAM * law.n_params:
        reason = (
            f"under-determined: {res.n_points} fit points for {law.n_params} parameters "
            f"(fewer than {MIN_POINTS_PER_PARAM} per parameter)"
        )
    row.update(ranked=reason is None, not_ranked=reason)
    return row


def compare_laws(df: pd.DataFrame, laws=DEFAULT_LAWS, results: dict | None = None, **kw) -> pd.DataFrame:
    """:func:`rank_laws`'s table (best first); ``results``, when given, receives each fitted law's
    :class:`FitResult` (fitted on the training split)."""
    r = rank_laws(df, laws, **kw)
    if results is not None:
        results.update(r.results)
    return r.table


def ranking_rows(r: Ranking) -> pd.DataFrame:
    """The ranking as a display table (percentages, intervals as text): ``moelab fit --compare`` prints it
    and ``moelab report`` shows it."""

    def pct(v):
        return "—" if v is None or not np.isfinite(v) else f"{v:.2%}"

    rows = []
    for i, t in enumerate(r.table.to_dict(orient="records")):
        skipped = t.get("skipped")
        if isinstance(skipped, str):
            rows.append({"law": t["law"], "parameters": t["n_params"], "status": f"not fitted: {skipped}"})
            continue
        lo, hi = t.get("held_out_lo"), t.get("held_out_hi")
        ci = f"[{pct(lo)}, {pct(hi)}]" if lo is not None and np.isfinite(lo) else "—"
        rows.append(
            {
                "law": t["law"] + (" (best)" if t["law"] == r.best else ""),
                "parameters": t["n_params"],
                "fitted on": t["domain"],
                "fit runs": t["n_train"],
                "held-out runs": t.get("n_held_out", 0),
                "held-out mean |rel. error|": pct(t.get("held_out_mean_abs_rel_error")),
                "95% interval": ci,
                "median": pct(t.get("held_out_median_abs_rel_error")),
                "max": pct(t.get("held_out_max_abs_rel_error")),
                "in-sample": pct(t.get("train_mean_abs_rel_error")),
                "on a bound": t.get("on_bound") or "—",
                "status": f"rank {i + 1}" if t.get("ranked") else f"not ranked: {t.get('not_ranked')}",
            }
        )
    return pd.DataFrame(rows).fillna("—")


def format_ranking(r: Ranking) -> str:
    """Plain text of :func:`ranking_rows` with the split and the best law."""
    head = (
        f"held out: {len(r.heldout_ids)} runs at the top of the compute range of each stratum (dense, MoE)"
        if r.heldout_ids
        else "held out: none"
    )
    best = f"best law ({r.basis}): {r.best}" if r.best else "best law: none"
    return "\n".join([head, ranking_rows(r).to_string(index=False), best, *r.notes])
