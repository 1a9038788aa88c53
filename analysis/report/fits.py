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

MIN_POINTS_PER_PARAM = 2  # a law needs this many fit points per parameter to be ranked best
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
    # A law with fewer than two fit points per parameter can pass through its points and still miss the
    # held-out ones by luck or not at all: rank the well-determined laws when there are any.
    determined = [x for x in ranked if x.n_fit >= MIN_POINTS_PER_PARAM * len(x.params)]
    if determined and len(determined) < len(ranked):
        left = ", ".join(
            f"{x.name} ({x.n_fit} points, {len(x.params)} parameters)" for x in ranked if x not in determined
        )
        an.notes.append(
            f"Not ranked: under-determined fits with fewer than {MIN_POINTS_PER_PARAM} points per "
            f"parameter: {left}."
        )
        ranked = determined
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

        # Clark et al.'s law has no data term: its curve only means something when the runs share D
        if ok["tokens"].nunique() == 1:
            an.clark = clark_curve
            an.clark_label = "Clark et al. (2022) law fitted to the sweep"
    _frontier_and_extrapolation(an, ok, target)
    return an


# Hunyuan-Large (arXiv 2411.02265): trained on 7T tokens; its own compute-optimal allocation, fitted on
# C_min from 5e18 to 9.5e19 FLOPs: N_opt = 5.9e-3 C^0.5305 (activated), D_opt = 3.2 C^0.50
# (../shared/LAWS.md).
TARGET_TOKENS = {"hunyuan-large": 7.0e12}
PAPER_LAWS = {
    "hunyuan-large": {
        "n_opt_coef": 5.9e-3,
        "n_opt_exp": 0.5305,
        "d_opt_coef": 3.2,
        "d_opt_exp": 0.50,
        "label": "Hunyuan-Large paper's law",
    },
}
TARGET_SEQ_LEN = 4096  # for moelab.accounting's attention term at the target


def _arch_row(n, d, knobs: dict) -> pd.DataFrame:
    n = np.atleast_1d(np.asarray(n, dtype=float))
    d = np.broadcast_to(np.asarray(d, dtype=float), n.shape)
    return pd.DataFrame(
        {"active_params": n, "tokens": d, **{k: np.full(n.shape, v) for k, v in knobs.items()}}
    )


def _samples(res, max_samples: int = 200) -> list[dict]:
    """The bootstrap's parameter samples as dicts (none when the fit had no bootstrap)."""
    b = res.bootstrap
    if b is None:
        return []
    return [dict(zip(b.names, row, strict=True)) for row in np.asarray(b.samples)[:max_samples]]


def frontier(res, flops: np.ndarray, knobs: dict, n_grid: np.ndarray, cost) -> pd.DataFrame:
    """The compute-optimal frontier of a fitted law L(N, D): at each compute C, the N minimising
    L(N, C / cost(N)) over ``n_grid`` (Hoffmann et al. 2022, eq. 4 numerically, for any law and any cost model
    C = cost(N)·D), with 95% percentile bands over the bootstrap samples."""

    def solve(params):
        nn, cc = np.meshgrid(n_grid, flops)
        dd = cc / cost(nn)
        pred = np.asarray(res.law.predict(params, _arch_row(nn.ravel(), dd.ravel(), knobs)), dtype=float)
        pred = np.where(np.isfinite(pred), pred, np.inf).reshape(nn.shape)
        j = np.argmin(pred, axis=1)
        rows = np.arange(len(flops))
        # a minimum on the grid's edge is no minimum (the law keeps improving beyond it): leave it out
        edge = np.where((j == 0) | (j == len(n_grid) - 1), np.nan, 1.0)
        return pred[rows, j] * edge, nn[rows, j] * edge, dd[rows, j] * edge

    loss, n_opt, d_opt = solve(res.params)
    out = pd.DataFrame({"flops": flops, "loss": loss, "n_opt": n_opt, "d_opt": d_opt})
    samples = _samples(res)
    if len(samples) >= 5:
        sol = [solve(p) for p in samples]
        for k, name in enumerate(("loss", "n_opt", "d_opt")):
            stack = np.array([x[k] for x in sol])
            out[f"{name}_lo"], out[f"{name}_hi"] = np.nanpercentile(stack, [2.5, 97.5], axis=0)
    return out


def _flops_model(ok: pd.DataFrame):
    """The sweep's cost per token as a power of N, fitted to the runs' own accounting (log-log least squares)
    so the in-sweep frontier lives on the same compute axis as the points."""
    n = ok["active_params"].to_numpy(dtype=float)
    fpt = (ok["flops"] / ok["tokens"]).to_numpy(dtype=float)
    if np.ptp(np.log(n)) < 1e-6:
        k = float(np.median(fpt / n))
        return lambda x: k * np.asarray(x, dtype=float)
    slope, icpt = np.polyfit(np.log(n), np.log(fpt), 1)
    return lambda x: np.exp(icpt) * np.asarray(x, dtype=float) ** slope


def _knobs(law, row: dict) -> dict:
    return {c: row[c] for c in law.columns if c not in ("active_params", "tokens")}


def _frontier_and_extrapolation(an: Analysis, ok: pd.DataFrame, target: str) -> None:
    """The best law with a data term (N and D) drawn as a frontier over the sweep's compute, and carried to
    ``target`` (a moelab preset) at its training tokens."""
    cands = [x for x in an.laws if {"active_params", "tokens"} <= set(an.results[x.name].law.columns)]
    if not cands:
        return
    best = (
        an.best
        if an.best in [x.name for x in cands]
        else min(cands, key=lambda x: x.heldout_err if x.heldout_err is not None else np.inf).name
    )
    res = an.results[best]
    best_run = ok.loc[ok["loss"].idxmin()]
    knobs = _knobs(res.law, best_run.to_dict())
    cost = _flops_model(ok)
    c_lo, c_hi = float(ok["flops"].min()), float(ok["flops"].max())
    flops = np.geomspace(c_lo / 1.5, c_hi * 1.5, 40)
    n_lo, n_hi = float(ok["active_params"].min()), float(ok["active_params"].max())
    an.frontier = frontier(res, flops, knobs, np.geomspace(n_lo / 30, n_hi * 30, 300), cost)
    an.frontier.attrs["law"] = best
    if target not in TARGET_TOKENS:
        an.notes.append(f"No training-token count is known for {target}: no extrapolation.")
        return
    from moelab.accounting import param_counts, train_flops_per_token
    from moelab.presets import get_preset

    cfg = get_preset(target)
    counts = param_counts(cfg)
    tokens = TARGET_TOKENS[target]
    row = {
        "active_params": float(counts.active),
        "tokens": tokens,
        "n_experts": cfg.n_experts,
        "shared_ratio": float(cfg.shared_ratio),
        "granularity": float(cfg.granularity),
        "top_k": cfg.top_k,
    }
    tknobs = _knobs(res.law, row)
    x = _arch_row(row["active_params"], tokens, tknobs)
    loss = float(np.asarray(res.law.predict(res.params, x))[0])
    samples = [float(np.asarray(res.law.predict(p, x))[0]) for p in _samples(res)]
    lo, hi = np.nanpercentile(samples, [2.5, 97.5]) if len(samples) >= 5 else (None, None)
    flops_moelab = train_flops_per_token(cfg, TARGET_SEQ_LEN) * tokens
    c6 = 6.0 * counts.active * tokens
    decades = np.log10(c6 / c_hi)
    # the far frontier uses C = 6 N D (Kaplan et al. 2020), the convention of both papers' allocation laws
    far = np.geomspace(c_lo, c6 * 30, 60)
    an.frontier_far = frontier(
        res,
        far,
        tknobs,
        np.geomspace(n_lo / 10, counts.active * 1e3, 400),
        lambda n: 6.0 * np.asarray(n, dtype=float),
    )
    paper = PAPER_LAWS.get(target)
    rows = []
    if paper:
        n_p = paper["n_opt_coef"] * c6 ** paper["n_opt_exp"]
        d_p = paper["d_opt_coef"] * c6 ** paper["d_opt_exp"]
        j = int(np.argmin(np.abs(np.log(far / c6))))
        ours_n, ours_d = an.frontier_far["n_opt"].iloc[j], an.frontier_far["d_opt"].iloc[j]
        rows = [
            {
                "quantity": "compute-optimal N at this C: this sweep's law / the paper's law",
                "value": f"{ours_n:.3g} / {n_p:.3g}",
            },
            {
                "quantity": "compute-optimal D at this C: this sweep's law / the paper's law",
                "value": f"{ours_d:.3g} / {d_p:.3g}",
            },
            {
                "quantity": "compute by the paper's C = 9.59 N D + 2.3e8 D (FLOPs)",
                "value": f"{(9.59 * counts.active + 2.3e8) * tokens:.3g}",
            },
            {
                "quantity": f"compute by moelab.accounting (seq_len {TARGET_SEQ_LEN}) (FLOPs)",
                "value": f"{flops_moelab:.3g}",
            },
        ]
    an.extrapolation = {
        "name": target,
        "law": best,
        "active_params": float(counts.active),
        "total_params": float(counts.total),
        "tokens": tokens,
        "flops": c6,
        "flops_moelab": flops_moelab,
        "loss": loss,
        "loss_lo": None if lo is None else float(lo),
        "loss_hi": None if hi is None else float(hi),
        "n_bootstrap": len(samples),
        "decades": round(float(decades), 1),
        "knobs": tknobs,
        "paper": paper,
        "rows": rows,
        "notes": [
            f"Compute on this page is C = 6·N·D with N = {counts.active:.3g} activated non-embedding "
            f"parameters ({counts.total:.3g} total) and D = {tokens:.3g} tokens; the law was fitted to "
            "all runs but the held-out ones."
        ]
        + ([] if samples else ["No bootstrap was run, so the extrapolated loss has no interval."]),
    }
