"""The report's figures: matplotlib (Agg), labelled axes with units, log axes where the law is a power law.

Every function takes plain tables/arrays and returns a ``matplotlib.figure.Figure``, or ``None`` when the data
cannot support the figure (the section is then left out of the report).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from analysis.domain import levels

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "svg.fonttype": "none",
    "savefig.bbox": "tight",
}

HOLDOUT = dict(marker="*", s=140, facecolor="none", edgecolor="crimson", linewidths=1.2, zorder=5)


def _plt():
    import matplotlib  # heavy (about a second): only drawing needs it, so reading results stays quick

    if "ipykernel" not in sys.modules:  # in Jupyter keep the inline backend so figures show
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def _expert_colors(values: Sequence) -> dict:
    plt = _plt()
    vals = sorted({int(v) for v in values})
    cmap = plt.get_cmap("viridis")
    return {v: cmap(0.85 * i / max(1, len(vals) - 1)) for i, v in enumerate(vals)}


def sci(x: float, digits: int = 2) -> str:
    """1.2e+13 -> '1.2e13' (for labels)."""
    if x is None or not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    e = math.floor(math.log10(abs(x)))
    if round(abs(x) / 10**e, digits - 1) >= 10:  # 999424 -> 1.0e6, not 10e5
        e += 1
    if -2 <= e <= 3:
        return f"{x:.{max(0, digits - 1 - e) if e < digits else 0}f}"
    return f"{x / 10**e:.{digits - 1}f}e{e}"


def curve_column(curves: dict[str, pd.DataFrame], min_points: int = 3) -> str | None:
    """``eval_loss`` when runs evaluated at least ``min_points`` times, else the training ``loss``."""

    def count(col):
        return max((int(c[col].notna().sum()) if col in c else 0 for c in curves.values()), default=0)

    if count("eval_loss") >= min_points:
        return "eval_loss"
    return "loss" if count("loss") >= min_points else None


def training_curves(runs: pd.DataFrame, curves: dict[str, pd.DataFrame]):
    """Held-out loss against tokens seen, one line per run, coloured by n_experts (the training loss when the
    runs were not evaluated along the way)."""
    col = curve_column({r: c for r, c in curves.items() if r in set(runs["run_id"])})
    if col is None:
        return None
    have = [r for r in runs.itertuples() if r.run_id in curves and col in curves[r.run_id]]
    plt = _plt()
    colors = _expert_colors([r.n_experts for r in have])
    fig, ax = plt.subplots(figsize=(7.0, 4.3))
    for r in have:
        c = curves[r.run_id]
        c = c[c[col].notna() & (c["tokens"] > 0)]
        c = c[np.isfinite(c[col].astype(float))]
        if c.empty:
            continue
        style = "-" if r.status == "succeeded" else ":"
        ax.plot(c["tokens"], c[col], style, color=colors[int(r.n_experts)], lw=1.1, alpha=0.85)
    ax.set_xscale("log")
    _no_minor_labels(ax.xaxis)
    ax.set_xlabel("tokens seen D (tokens)")
    what = "held-out" if col == "eval_loss" else "training"
    ax.set_ylabel(f"{what} loss (nats/token)")
    ax.set_title(
        "Training curves" + ("" if col == "eval_loss" else " (training loss: no intermediate evals)")
    )
    handles = [plt.Line2D([], [], color=c, lw=2) for c in colors.values()]
    labels = [f"{e} expert{'s' if e > 1 else ''}" for e in colors]
    ax.legend(handles, labels, title="n_experts", loc="upper right")
    if (runs["status"] != "succeeded").any():
        ax.text(0.01, 0.02, "dotted: failed or diverged", transform=ax.transAxes, fontsize=8, color="0.4")
    return fig


def loss_vs_compute(
    ok: pd.DataFrame,
    frontier: pd.DataFrame | None = None,
    heldout_ids: Sequence[str] = (),
    law_label: str = "fitted law",
):
    """Final held-out loss against training compute, coloured by activated parameters, with the law's
    compute-optimal frontier L*(C) (``frontier``: analysis.frontier.frontier's columns C, L_opt[, L_opt_lo,
    L_opt_hi])."""
    if len(ok) < 2:
        return None
    plt = _plt()
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=(7.0, 4.3))
    sc = ax.scatter(
        ok["flops"],
        ok["loss"],
        c=ok["active_params"],
        norm=LogNorm(),
        cmap="viridis",
        s=28,
        edgecolor="k",
        linewidths=0.3,
        zorder=3,
    )
    ho = ok[ok["run_id"].isin(list(heldout_ids))]
    if len(ho):
        ax.scatter(ho["flops"], ho["loss"], label="held out of the fit", **HOLDOUT)
    if frontier is not None and len(frontier):
        ax.plot(
            frontier["C"],
            frontier["L_opt"],
            "-",
            color="crimson",
            lw=1.6,
            label=f"compute-optimal frontier ({law_label})",
        )
        if {"L_opt_lo", "L_opt_hi"} <= set(frontier.columns):
            ax.fill_between(
                frontier["C"],
                frontier["L_opt_lo"],
                frontier["L_opt_hi"],
                color="crimson",
                alpha=0.12,
                lw=0,
                label="95% bootstrap band",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_y(ax)
    _no_minor_labels(ax.xaxis)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("held-out loss (nats/token, log scale)")
    ax.set_title("Loss against compute")
    fig.colorbar(sc, ax=ax, label="activated parameters N (non-embedding)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")
    return fig


def _no_minor_labels(axis) -> None:
    """Readable log-axis labels: default decades when the range spans several, else 1-2-5 ticks as 3.0e12."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = axis.get_view_interval()
    if lo > 0 and hi / lo < 30:
        axis.set_major_locator(LogLocator(base=10, subs=[1, 2, 5], numticks=10))
        axis.set_major_formatter(FuncFormatter(lambda v, _: sci(v)))
    axis.set_minor_formatter(NullFormatter())


def _plain_log_y(ax) -> None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    lo, hi = ax.get_ylim()
    if hi / lo < 10:  # a narrow log range: plain numbers read better than 10^x
        subs = [1, 1.2, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9]
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=15))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter(""))


def _arch_label(g: pd.DataFrame) -> str:
    r = g.iloc[0]
    if int(r.get("n_experts", 1)) <= 1:
        return "dense"
    return f"E{int(r['n_experts'])}·k{int(r['top_k'])}" + (
        f"+{int(r['n_shared_experts'])}s" if r.get("n_shared_experts", 0) else ""
    )


def isoflop(ok: pd.DataFrame, minima: pd.DataFrame):
    """The IsoFLOP profiles of analysis.isoflop.isoflop_minima (run_ids, parabola coefficients c2, c1, c0 in
    log N, minimum N_opt, L_min, inside): the runs of each profile, its parabola over the sizes tried and its
    minimum (diamond; an open diamond outside the sizes tried)."""
    if minima is None or minima.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.3))
    cmap = plt.get_cmap("plasma")
    by_id = ok.drop_duplicates("run_id").set_index("run_id")
    m = minima.sort_values("C").reset_index(drop=True)
    several = m["arch"].nunique() > 1
    for i, row in m.iterrows():
        color = cmap(0.8 * i / max(1, len(m) - 1))
        g = by_id.loc[[r for r in row["run_ids"] if r in by_id.index]].sort_values("active_params")
        lab = f"C = {sci(row['C'])} FLOPs" + (f", {_arch_label(g)}" if several and len(g) else "")
        ax.plot(g["active_params"], g["loss"], "o", color=color, ms=5, label=lab)
        xs = np.linspace(np.log(g["active_params"].min()), np.log(g["active_params"].max()), 100)
        ax.plot(np.exp(xs), np.polyval([row["c2"], row["c1"], row["c0"]], xs), "-", color=color, lw=1.2)
        style = dict(mec="k", mew=0.8) if row["inside"] else dict(mfc="none", mec=color, mew=1.4)
        ax.plot([row["N_opt"]], [row["L_min"]], "D", color=color, ms=8, **style)
    ax.set_xscale("log")
    _no_minor_labels(ax.xaxis)
    ax.set_xlabel("activated parameters N (non-embedding)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("IsoFLOP curves (diamonds: parabola minima in log N)")
    ax.legend(loc="upper center", ncols=min(3, len(m)))
    return fig


def _param_groups(ok: pd.DataFrame, vary: str, fixed: Sequence[str], min_points: int) -> list[pd.DataFrame]:
    # realised shapes land within rounding of the requested knobs (ModelConfig.from_budget): compare their
    # levels (analysis.domain.levels: the sweep's nominal values, else realised values grouped)
    total = levels(ok, "total_params") if "total_params" in ok else np.nan  # a table may lack it (--csv)
    df = ok.assign(_active=levels(ok, "active_params"), _total=total)
    if "granularity" in df:
        df["_g"] = levels(df, "granularity")
    if "shared_ratio" in df:
        df["_s"] = levels(
            df.assign(shared_ratio=df["shared_ratio"].astype(float).fillna(0.0)), "shared_ratio"
        )
    if vary not in df:  # a table of runs (moelab report --csv) may lack the knob
        return []
    keys = [k for k in fixed if k in df]
    out = []
    for _, g in df.groupby(keys, dropna=False):
        if g[vary].nunique() >= min_points:
            out.append(g.sort_values(vary))
    return sorted(out, key=len, reverse=True)


def moe_groups(ok: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    """Controlled comparisons: runs that differ in one MoE knob with the activated size and tokens fixed
    (and, for granularity, the total size too: Krajewski et al. 2024 vary G at fixed N)."""
    if "n_experts" not in ok:
        return {}
    base = ["d_model", "n_layers", "tokens", "seq_len"]
    out = {
        "n_experts": _param_groups(ok, "n_experts", base + ["top_k", "n_shared_experts", "_g", "_s"], 2),
        "shared_ratio": _param_groups(ok, "_s", base + ["n_experts", "_g", "_active"], 2),
        "granularity": _param_groups(ok, "_g", base + ["n_shared_experts", "_s", "_active", "_total"], 2),
    }
    return {k: v for k, v in out.items() if v}


def moe_effects(
    ok: pd.DataFrame,
    clark: Callable[[np.ndarray, pd.DataFrame], np.ndarray] | None = None,
    clark_label: str = "Clark et al. fit",
    clark_tokens: float | None = None,
):
    """Up to three panels: loss vs n_experts at fixed activated budget (with the Clark fit, drawn only for
    groups at ``clark_tokens``, the token budget it was fitted on), vs shared_ratio, vs granularity."""
    groups = moe_groups(ok)
    if not groups:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups) + 0.6, 3.6), squeeze=False)
    for ax, (knob, gs) in zip(axes[0], groups.items(), strict=True):
        for j, g in enumerate(gs[:6]):
            color = plt.get_cmap("tab10")(j)
            lab = f"N = {sci(float(g['active_params'].median()))}, D = {sci(float(g['tokens'].iloc[0]))}"
            ax.plot(
                g[knob],
                g["loss"],
                "o-" if clark is None or knob != "n_experts" else "o",
                color=color,
                ms=5,
                lw=1,
                label=lab,
            )
            d = float(g["tokens"].iloc[0])
            at_d = clark_tokens is None or abs(np.log(d / clark_tokens)) < np.log(1.1)
            if knob == "n_experts" and clark is not None and at_d:
                xs = np.geomspace(g[knob].min(), g[knob].max(), 60)
                ax.plot(xs, clark(xs, g), "-", color=color, lw=1.2, alpha=0.8)
        if knob == "n_experts":
            ax.set_xscale("log", base=2)
            ax.set_xlabel("routed experts E (log scale)")
            ax.set_title("Experts at fixed activated N" + (f"\nline: {clark_label}" if clark else ""))
        elif knob == "shared_ratio":
            ax.set_xlabel("shared_ratio (shared / activated FFN)")
            ax.set_title("Shared-expert ratio")
        else:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("granularity G (dense FFN width / expert width)")
            ax.set_title("Expert granularity")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.legend(loc="best", fontsize=7.5)
    fig.tight_layout()
    return fig


def run_label(row) -> str:
    """A run as its knobs: ``E=8 N=2.0e4 D=1.0e6`` (run ids mean nothing to a reader)."""
    parts = []
    if "n_experts" in row and pd.notna(row["n_experts"]):
        parts.append(f"E={int(row['n_experts'])}")
    for key, col in (("N", "active_params"), ("D", "tokens")):
        if col in row and pd.notna(row[col]):
            parts.append(f"{key}={sci(float(row[col]), 2)}")
    return " ".join(parts) or str(row.get("run_id", "?"))[:6]


HELDOUT_MARKERS = ("*", "D", "s", "^", "v", "P", "X")


def heldout(table: pd.DataFrame, runs: pd.DataFrame | None = None):
    """Predicted against observed loss (columns law, observed, predicted, heldout: bool), and the held-out
    runs' relative errors per law; ``runs`` (with run_id) names the runs by their knobs."""
    if table is None or table.empty or not table["heldout"].any():
        return None
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.5, 4.3), gridspec_kw={"width_ratios": [1.0, 1.1]})
    laws = list(dict.fromkeys(table["law"]))
    lo = float(min(table["observed"].min(), table["predicted"].min())) * 0.98
    hi = float(max(table["observed"].max(), table["predicted"].max())) * 1.02
    ax.plot([lo, hi], [lo, hi], "-", color="0.5", lw=0.8, label="y = x")
    for i, law in enumerate(laws):
        t = table[table["law"] == law]
        color = plt.get_cmap("tab10")(i)
        ax.scatter(
            t.loc[~t["heldout"], "observed"], t.loc[~t["heldout"], "predicted"], s=14, color=color, alpha=0.45
        )
        # a marker per law, largest first, so laws with the same predictions stay visible
        ax.scatter(
            t.loc[t["heldout"], "observed"],
            t.loc[t["heldout"], "predicted"],
            s=max(30, 110 - 20 * i),
            marker=HELDOUT_MARKERS[i % len(HELDOUT_MARKERS)],
            color=color,
            edgecolor="k",
            linewidths=0.4,
            label=law,
            zorder=3 + len(laws) - i,
        )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("observed loss (nats/token)")
    ax.set_ylabel("predicted loss (nats/token)")
    ax.set_title("Predicted vs observed (large markers: held out)", fontsize=10)
    ax.legend(loc="upper left", fontsize=7.5)
    ho = table[table["heldout"]].copy()
    ho["rel"] = 100 * (ho["predicted"] - ho["observed"]) / ho["observed"]
    piv = ho.pivot_table(index="run_id", columns="law", values="rel", aggfunc="first")
    piv = piv.loc[ho.drop_duplicates("run_id").sort_values("observed")["run_id"]]
    labels = [r[:6] for r in piv.index]
    if runs is not None and "run_id" in runs:
        by_id = runs.drop_duplicates("run_id").set_index("run_id")
        labels = [run_label(by_id.loc[r]) if r in by_id.index else r[:6] for r in piv.index]
    x = np.arange(len(piv))
    width = 0.8 / max(1, len(laws))
    for i, law in enumerate(laws):
        if law in piv:
            ax2.bar(
                x + (i - (len(laws) - 1) / 2) * width,
                piv[law],
                width,
                color=plt.get_cmap("tab10")(i),
                label=law,
            )
    ax2.axhline(0, color="0.3", lw=0.8)
    ax2.set_xticks(x, labels, rotation=25, ha="right", fontsize=7.5)
    ax2.set_xlabel("held-out run (routed experts E, activated N, tokens D)")
    ax2.set_ylabel("relative error (predicted − observed), %")
    ax2.set_title("Held-out relative errors", fontsize=10)
    ax2.legend(fontsize=7.5, loc="best")
    fig.tight_layout()
    return fig


def extrapolation(frontier: pd.DataFrame, target: dict, points: pd.DataFrame | None = None):
    """The fitted compute-optimal N_opt(C) and D_opt(C) carried out to the target's compute, next to the
    paper's own allocation law and the target's chosen (N, D). ``frontier`` is analysis.frontier.frontier's
    table in the paper's compute model, with the paper's law as columns paper_N_opt, paper_D_opt
    (analysis.extrapolate.paper_allocation); ``points`` has C, N_opt, D_opt (IsoFLOP minima)."""
    if frontier is None or frontier.empty:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0))
    c = frontier["C"].to_numpy(dtype=float)
    for ax, col, unit, tkey in [
        (axes[0], "N_opt", "activated parameters", "active_params"),
        (axes[1], "D_opt", "tokens", "tokens"),
    ]:
        ax.plot(c, frontier[col], "-", color="C0", lw=1.6, label="this sweep's fitted law")
        if f"{col}_lo" in frontier:
            ax.fill_between(
                c, frontier[f"{col}_lo"], frontier[f"{col}_hi"], color="C0", alpha=0.15, lw=0,
                label="95% bootstrap band",
            )  # fmt: skip
        if f"paper_{col}" in frontier:
            ax.plot(
                c, frontier[f"paper_{col}"], "--", color="C3", lw=1.4,
                label=f"the paper's allocation law ({frontier.attrs.get('paper', 'paper')})",
            )  # fmt: skip
        if points is not None and col in points:
            ax.plot(points["C"], points[col], "o", color="k", ms=4, label="IsoFLOP minima (this sweep)")
        tv = target.get(tkey)
        if tv and target.get("flops"):
            ax.plot(
                [target["flops"]], [tv], "*", ms=15, color="gold", mec="k",
                label=f"{target.get('name', 'target')} ({sci(tv)})",
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs, the paper's compute model)")
        ax.set_ylabel(f"{col} ({unit})")
        ax.set_title(f"Compute-optimal {col}")
        ax.legend(loc="upper left", fontsize=7.5)
    fig.tight_layout()
    return fig


def router_health(runs: pd.DataFrame, expert_load: dict[str, list[list[float]]]):
    """Left: final per-expert load of the largest MoE run (layer × expert, as a multiple of uniform).
    Right: dropped and recycled token fractions per MoE run."""
    moe = runs[(runs["n_experts"] > 1) & runs["run_id"].isin(list(expert_load))]
    if moe.empty:
        return None
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    pick = moe.sort_values(["total_params", "tokens"]).iloc[-1]
    load = np.asarray(expert_load[pick["run_id"]], dtype=float)
    if load.ndim != 2:
        return None
    rel = load * load.shape[1]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    span = max(0.05, float(np.abs(rel - 1).max()))
    im = ax.imshow(
        rel, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(1.0, 1 - span, 1 + span), interpolation="nearest"
    )
    ax.set_xlabel("routed expert")
    ax.set_ylabel("layer")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(16, load.shape[1]), integer=True))
    if load.shape[0] <= 16:  # one tick per layer (MaxNLocator puts -0.5 and 0.5 around a single layer)
        ax.set_yticks(np.arange(load.shape[0]))
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=16, integer=True))
    ax.grid(False)
    ax.set_title(f"Per-expert load, {run_label(pick)}", fontsize=10)
    fig.colorbar(im, ax=ax, label="load / uniform share")
    # one bar pair per MoE architecture (mean over its runs), so the chart stays readable on big sweeps
    m = moe.assign(arch=[_arch_label(moe.loc[[i]]) for i in moe.index])
    m = (
        m.groupby("arch", sort=False)
        .agg(
            n_experts=("n_experts", "first"),
            top_k=("top_k", "first"),
            runs=("run_id", "size"),
            dropped=("dropped_frac", "mean"),
            recycled=("recycled_frac", "mean"),
        )
        .sort_values(["n_experts", "top_k"])
    )
    x = np.arange(len(m))
    drop = m["dropped"].fillna(0).to_numpy(dtype=float) * 100
    rec = m["recycled"].fillna(0).to_numpy(dtype=float) * 100
    ax2.bar(x - 0.2, drop, 0.4, color="C3", label="dropped")
    ax2.bar(x + 0.2, rec, 0.4, color="C0", label="recycled")
    ax2.set_xticks(
        x, list(m.index), rotation=45 if len(m) > 6 else 0, ha="right" if len(m) > 6 else "center", fontsize=8
    )
    ax2.set_ylim(0, max(1e-3, float(max(drop.max(), rec.max()))) * 1.3)
    ax2.set_xlabel("MoE architecture (routed experts · top_k + shared)")
    ax2.set_ylabel("routed tokens (%)")
    ax2.set_title("Dropped and recycled tokens (final, mean over runs)")
    ax2.legend(loc="upper left", ncols=2)
    fig.tight_layout()
    return fig
