"""The report's ``routers`` section: router recipes compared as Clark et al. (2022) compared theirs.

Everything here is computed by ``analysis.routers`` (Clark's law per router family with a bootstrap, the
effective-parameter gain over dense with its interval); this module lays it out: loss against expert count
per recipe with the fitted curve and its band at each activated size, the gain over dense per recipe, the
fitted coefficients, and each recipe's final router health. It appears when the results hold dense runs and
MoE runs of at least two recipes (``sweeps/routers.yaml``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.report import figures as F
from analysis.report.data import ResultsData
from analysis.report.render import Section
from analysis.routers import RouterFit, compare_routers, router_families

__all__ = ["routers_section"]


def _iv(fit: RouterFit, name: str) -> str:
    lo, hi = fit.res.intervals[name]
    return f"{fit.res.params[name]:.3g} [{lo:.3g}, {hi:.3g}]"


def curves_figure(fits: list[RouterFit]):
    """One panel per recipe: held-out loss against E (log axis), measured runs as dots, the family's fitted
    law as a line with its 95% bootstrap band, one colour per activated size."""
    plt = F._plt()
    n = len(fits)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.7 * cols, 3.0 * rows), squeeze=False, sharey=True)
    sizes = sorted({float(x) for f in fits for x in f.runs["active_params"].unique()})
    cmap = plt.get_cmap("viridis")
    colour = {s: cmap(0.85 * i / max(1, len(sizes) - 1)) for i, s in enumerate(sizes)}
    e_max = max(float(f.runs["n_experts"].max()) for f in fits)
    grid = np.unique(np.concatenate([[1.0], np.geomspace(1.0, 2 * e_max, 60)]))
    for ax, fit in zip(axes.flat, fits, strict=False):
        for s in sizes:
            runs = fit.runs[np.isclose(fit.runs["active_params"], s, rtol=0.05)]
            if runs.empty:
                continue
            mid, lo, hi = fit.curve(float(runs["active_params"].median()), grid)
            ax.fill_between(grid, lo, hi, color=colour[s], alpha=0.15, lw=0)
            ax.plot(grid, mid, color=colour[s], lw=1.2, label=f"N={F.sci(s)}")
            ax.plot(runs["n_experts"], runs["loss"], "o", ms=4, color=colour[s])
        ax.set_xscale("log", base=2)
        ax.set_title(f"{fit.family} ({fit.law.name})", fontsize=9)
        ax.set_xlabel("routed experts E")
        ax.set_ylabel("held-out loss (nats/token)")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def gains_figure(fits: list[RouterFit]):
    """Effective parameter count over dense (N_eq / N) per recipe and (N, E), with 95% bootstrap intervals."""
    plt = F._plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(fits) + 2), 3.4))
    cells = sorted(
        {
            (float(n), int(e))
            for f in fits
            for n, e in zip(f.gains["active_params"], f.gains["n_experts"], strict=True)
        }
    )
    width = 0.8 / max(1, len(cells))
    cmap = plt.get_cmap("tab10")
    for j, (n, e) in enumerate(cells):
        xs, ys, lo, hi = [], [], [], []
        for i, fit in enumerate(fits):
            g = fit.gains[np.isclose(fit.gains["active_params"], n) & (fit.gains["n_experts"] == e)]
            if g.empty:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(float(g["epc"].iloc[0]))
            lo.append(float(g["epc_lo"].iloc[0]))
            hi.append(float(g["epc_hi"].iloc[0]))
        ys_a = np.array(ys)
        err = np.vstack([np.maximum(ys_a - np.array(lo), 0), np.maximum(np.array(hi) - ys_a, 0)])
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=4, capsize=2, color=cmap(j % 10),
                    label=f"N={F.sci(n)}, E={e}")  # fmt: skip
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_xticks(range(len(fits)), [f.family for f in fits], fontsize=8)
    ax.set_ylabel("effective params / N (dense = 1)")
    ax.set_yscale("log")
    ax.set_title("Gain over dense per router recipe (Clark et al.'s effective parameter count)", fontsize=10)
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    return fig


def _tables(fits: list[RouterFit], data: ResultsData) -> list[tuple[str, pd.DataFrame]]:
    coef = []
    for f in fits:
        row = {"recipe": f.family, "law": f.law.name, "runs": f.res.n_points}
        row.update({p: _iv(f, p) for p in f.law.params})
        coef.append(row)
    gains = []
    for f in fits:
        for _, g in f.gains.iterrows():
            gains.append(
                {
                    "recipe": f.family,
                    "N": F.sci(g["active_params"]),
                    "E": int(g["n_experts"]),
                    "loss": f"{g['loss']:.4f}",
                    "dense loss": "—" if not np.isfinite(g["loss_dense"]) else f"{g['loss_dense']:.4f}",
                    "measured change": "—"
                    if not np.isfinite(g["loss_change"])
                    else f"{g['loss_change']:+.2%}",
                    "effective params / N": f"{g['epc']:.3g}",
                    "95% interval": f"[{g['epc_lo']:.3g}, {g['epc_hi']:.3g}]",
                }
            )
    health = []
    for name, runs in router_families(data.ok).items():
        moe = runs[runs["n_experts"] > 1]
        row = {"recipe": name, "runs": len(moe)}
        for col in ("load_min", "load_max", "dropped_frac", "recycled_frac"):
            if col in moe:
                v = pd.to_numeric(moe[col], errors="coerce")
                row[col] = "—" if v.isna().all() else f"{v.mean():.3g}"
        health.append(row)
    return [
        ("Clark's law per recipe: estimate [95% bootstrap interval]", pd.DataFrame(coef)),
        ("Gain over dense at each size and expert count", pd.DataFrame(gains)),
        ("Router health at the end of training (mean over the recipe's MoE runs)", pd.DataFrame(health)),
    ]


def routers_section(
    data: ResultsData, n_boot: int = 200, seed: int = 0
) -> tuple[Section | None, dict | None]:
    """The section and its fits (JSON-ready), or (None, None) without dense runs and two recipes."""
    ok = data.ok
    if "n_experts" not in ok or len(router_families(ok)) < 2:
        return None, None
    fits = compare_routers(ok, n_boot=n_boot, seed=seed)
    figures = [("router_curves", curves_figure(fits)), ("router_gains", gains_figure(fits))]
    notes = [
        "Each recipe's law is fitted to its own MoE runs and the shared dense runs; dense runs pin every "
        "recipe's curve at E = 1, so recipes differ only in how loss falls with E.",
    ]
    if any(f.law.name == "clark_sbase" for f in fits):
        notes.append(
            "With fewer than three expert counts above one, E_start and E_max (where Ê starts and stops "
            "growing) cannot be identified: those recipes keep Clark et al.'s S-BASE values (1.847, 314.5) "
            "and fit a, b, c, d. Clark et al. fitted them per router from E up to 512."
        )
    if any(f.runs["active_params"].nunique() < 3 for f in fits):
        notes.append(
            "With two activated sizes only b + c log10 N is determined at those sizes, not b and c apart: "
            "read the curves and the gains, not the coefficients (Clark et al. spanned two decades of N)."
        )
    notes.append(
        "Intervals resample each recipe's few runs (one seed each): they carry run-to-run noise only through "
        "the scatter of those runs, a bootstrap of six runs is too narrow more often than 5% of the time "
        "(on synthetic runs from known laws, tests/test_analysis_routers.py), and recipes whose intervals "
        "overlap are not distinguished by these data."
    )
    for f in fits:
        notes += [f"{f.family}: {w}" for w in dict.fromkeys(f.warnings)]
    lead = (
        "How each router recipe turns more experts into lower loss: Clark's law fitted per recipe (one curve "
        "of loss against E per recipe and size), and its gain over dense as an effective parameter count."
    )
    sec = Section("routers", "Router recipes", lead, figures=figures, tables=_tables(fits, data), notes=notes)
    return sec, {"families": [f.to_dict() for f in fits], "n_boot": n_boot}
