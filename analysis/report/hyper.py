"""The report's ``hyper`` section: learning rate and batch size, and the gradient noise scale.

Everything drawn here is computed by ``analysis.hyper`` (cell optima, their power laws with bootstrap
intervals, B_crit(L), C_min, the expert/shared noise ratio); this module only lays it out: the LR-loss curves
of each cell with their fitted optimum, the optima against compute beside DeepSeek's laws, B_simple over
training and against the loss, the expert/shared noise-scale ratio, and the IsoFLOP laws on C and on C_min
beside Hunyuan-Large's (which was fitted on C_min).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import hyper as H
from analysis.isoflop import fit_isoflop
from analysis.load import compute_of
from analysis.report import figures as F
from analysis.report.data import ResultsData
from analysis.report.render import Section
from moelab.errors import MoelabError
from moelab.presets import paper_facts

__all__ = ["hyper_section"]


def _iv(law: H.PowerLaw, name: str, digits: int = 3) -> str:
    lo, hi = law.intervals.get(name, (None, None))
    return "—" if lo is None else f"[{lo:.{digits}g}, {hi:.{digits}g}]"


def lr_curves(an: H.HyperAnalysis):
    """Held-out loss against peak learning rate, one panel per cell, one line per batch size; the star is the
    cell's fitted optimum (hollow when it lies outside the grid tried)."""
    opt = an.optima
    if opt is None or opt.table.empty:
        return None
    plt = F._plt()
    t = opt.table
    n = len(t)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False, sharey=False)
    cmap = plt.get_cmap("viridis")
    for i, row in t.iterrows():
        ax = axes.flat[i]
        x, y, loss = opt.grids[i]
        bs = np.unique(y)
        for j, b in enumerate(bs):
            m = y == b
            order = np.argsort(x[m])
            ax.plot(
                np.exp(x[m][order]),
                loss[m][order],
                "o-",
                ms=3,
                lw=1,
                color=cmap(0.85 * j / max(1, len(bs) - 1)),
                label=f"B={np.exp(b):.0f}",
            )
        if math.isfinite(row["eta_opt"]) and math.isfinite(row["loss_opt"]):
            inside = bool(row["inside_lr"])
            ax.scatter(
                [row["eta_opt"]],
                [row["loss_opt"]],
                marker="*",
                s=140,
                zorder=5,
                facecolor="crimson" if inside else "none",
                edgecolor="crimson",
            )
        ax.set_xscale("log")
        ax.set_title(
            f"E={int(row['n_experts'])}  N={F.sci(row['active_params'])}  D={F.sci(row['tokens'])}",
            fontsize=9,
        )
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("held-out loss (nats/token)")
        lo, hi = np.percentile(loss, [0, 60])
        if math.isfinite(row["loss_opt"]):
            lo = min(lo, row["loss_opt"])
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))  # the valley, not the blow-ups
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    axes.flat[0].legend(title="batch (tokens)", fontsize=7)
    fig.tight_layout()
    return fig


def law_figure(an: H.HyperAnalysis):
    """The cells' optimal learning rate and batch against compute, the fitted power laws with their 95% band,
    and DeepSeek LLM's published laws (dashed)."""
    opt = an.optima
    if opt is None or opt.table.empty or not an.laws:
        return None
    plt = F._plt()
    t = opt.table
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9))
    C = t["flops"].to_numpy(float)
    grid = np.logspace(np.log10(C.min()) - 0.2, np.log10(C.max()) + 0.2, 50)
    colors = F._expert_colors(t["n_experts"])
    q = np.nanpercentile(np.exp(opt.samples), [2.5, 97.5], axis=0)  # [2, cells, 2]
    for ax, key, col, published, label in (
        (axes[0], 0, "eta_opt", H.deepseek_lr, "optimal peak learning rate"),
        (axes[1], 1, "B_opt", H.deepseek_batch, "optimal batch (tokens)"),
    ):
        inside = t["inside_lr"].to_numpy(bool) & (t["inside_B"].to_numpy(bool) if key else True)
        for e in sorted(colors):
            m = (t["n_experts"] == e).to_numpy() & np.isfinite(t[col].to_numpy(float))
            if not m.any():
                continue
            v = t[col].to_numpy(float)[m]
            err = np.abs(np.stack([q[0, m, key], q[1, m, key]]) - v)
            ax.errorbar(C[m], v, yerr=np.nan_to_num(err), fmt="none", ecolor=colors[e], alpha=0.5)
            ax.scatter(C[m][inside[m]], v[inside[m]], color=colors[e], label=f"E={e} cells", zorder=4)
            ax.scatter(C[m][~inside[m]], v[~inside[m]], facecolor="none", edgecolor=colors[e], zorder=4)
        law = an.laws.get("eta_opt(C)" if key == 0 else "B_opt(C)")
        if law is not None:
            p, lo, hi = law.predict(grid)
            ax.plot(grid, p, color="crimson", lw=1.5, label=f"fit: {law.formula.split('= ', 1)[1]}")
            if lo is not None:
                ax.fill_between(grid, lo, hi, color="crimson", alpha=0.15, lw=0)
        ax.plot(grid, published(grid), "k--", lw=1, label="DeepSeek LLM 2024")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_title("Learning rate (hollow: optimum outside the grid)")
    axes[1].set_title("Batch size")
    fig.tight_layout()
    return fig


def noise_figure(an: H.HyperAnalysis, curves: dict[str, pd.DataFrame], runs: pd.DataFrame):
    """B_simple over training (left), against the training loss with the fitted B_crit(L) (middle), and the
    routed-expert / shared noise-scale ratio of the MoE runs (right)."""
    pts = an.points
    if pts.empty or "b_simple" not in pts:
        return None
    plt = F._plt()
    by_id = runs.drop_duplicates("run_id").set_index("run_id")
    colors = F._expert_colors(by_id.get("n_experts", [1]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    for rid, c in curves.items():
        if "b_simple" not in c or rid not in by_id.index:
            continue
        e = int(by_id.loc[rid, "n_experts"]) if "n_experts" in by_id else 1
        c = c[c["b_simple"].notna()]
        axes[0].plot(c["tokens"], c["b_simple"], lw=0.8, alpha=0.7, color=colors.get(e, "0.5"))
        if {"b_simple_expert", "b_simple_shared"} <= set(c.columns) and e > 1:
            r = c["b_simple_expert"] / c["b_simple_shared"]
            axes[2].plot(c["tokens"], r, lw=0.8, alpha=0.7, color=colors.get(e, "0.5"))
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="tokens seen",
        ylabel="B_simple (tokens)",
        title="Gradient noise scale over training",
    )
    ok = pts["b_simple"].astype(float) > 0
    axes[1].scatter(pts["loss"][ok], pts["b_simple"][ok], s=6, alpha=0.4, color="0.3")
    law = an.bcrit.get("b_simple")
    if law is not None:
        L = np.linspace(pts["loss"].min(), pts["loss"].max(), 50)
        p, lo, hi = law.predict(L)
        bp = H.bcrit_params(law)
        axes[1].plot(
            L, p, color="crimson", label=f"B_crit = {bp['B_star']:.3g} / L^(1/{bp['alpha_B'] or 0:.3g})"
        )
        if lo is not None:
            axes[1].fill_between(L, lo, hi, color="crimson", alpha=0.15, lw=0)
        axes[1].legend(fontsize=7)
    axes[1].set(
        yscale="log",
        xlabel="training loss L (nats/token)",
        ylabel="B_simple (tokens)",
        title="Critical batch against loss",
    )
    if an.ratio is not None:
        for ek in an.ratio["e_over_k"]:
            axes[2].axhline(ek, color="k", ls="--", lw=1, label=f"E/k = {ek:g} (Hunyuan's rule)")
        axes[2].legend(fontsize=7)
    axes[2].set(
        xscale="log",
        yscale="log",
        xlabel="tokens seen",
        ylabel="B_noise(experts) / B_noise(shared)",
        title="Routed-expert / shared noise scale",
    )
    fig.tight_layout()
    return fig


def _isoflop_rows(an: H.HyperAnalysis) -> list[dict]:
    """Approach 2 on C and on C_min beside Hunyuan-Large's N_opt law (fitted on C_min); [] when the sweep
    has no IsoFLOP design or no C_min."""
    runs = an.runs
    if "c_min" not in runs or "loss" not in runs:
        return []
    ok = runs[(runs.get("status", "succeeded") == "succeeded") & runs["loss"].notna() & runs["c_min"].notna()]
    rows = []
    for label, col in (("C", None), ("C_min", "c_min")):
        try:
            res = fit_isoflop(ok, compute_col=col)
        except MoelabError:
            return []
        rows.append(
            {
                "coordinate": label,
                "N_opt = k C^a": f"{res.params['k_N']:.3g} {label}^{res.params['a']:.3f}",
                "budgets": len(res.minima),
                "source": "this sweep",
            }
        )
    facts = paper_facts("hunyuan-large")
    rows.append(
        {
            "coordinate": "C_min",
            "N_opt = k C^a": f"{facts.n_opt[0]:.3g} C_min^{facts.n_opt[1]:.4g}",
            "budgets": "—",
            "source": facts.source,
        }
    )
    return rows


def hyper_section(data: ResultsData, n_boot: int = 200) -> tuple[Section | None, dict | None]:
    """(section, fits.json entry), or (None, None) when the sweep has neither LR x batch cells nor a logged
    noise scale."""
    points = H.noise_points(data.curves)
    an = H.analyse_hyper(data.runs, points, n_boot=n_boot)
    have_cells = an.optima is not None and not an.optima.table.empty
    if not have_cells and points.empty:
        return None, None
    figures = [
        (name, fig)
        for name, fig in (
            ("hyper_lr", lr_curves(an)),
            ("hyper_laws", law_figure(an)),
            ("hyper_noise", noise_figure(an, data.curves, data.runs)),
        )
        if fig is not None
    ]
    tables = []
    if have_cells:
        t = an.optima.table
        tables.append(
            (
                "Loss optimum per cell (quadratic in log lr, log B)",
                pd.DataFrame(
                    {
                        "E": t["n_experts"].astype(int),
                        "N": t["active_params"].map(F.sci),
                        "D": t["tokens"].map(F.sci),
                        "C": t["flops"].map(F.sci),
                        "runs": t["n_runs"],
                        "fit": t["kind"],
                        "eta_opt": t["eta_opt"].map(lambda v: f"{v:.3g}"),
                        "B_opt (tokens)": t["B_opt"].map(lambda v: f"{v:.4g}"),
                        "inside grid (lr, B)": [
                            f"{'yes' if a else 'no'}, {'yes' if b else 'no'}"
                            for a, b in zip(t["inside_lr"], t["inside_B"], strict=True)
                        ],
                        "best run loss": t["best_run_loss"].map(lambda v: f"{v:.4f}"),
                    }
                ),
            )
        )
    law_rows = []
    for name, law in an.laws.items():
        for p, v in law.params.items():
            law_rows.append(
                {
                    "law": name,
                    "parameter": p,
                    "estimate": f"{v:.4g}",
                    "95% interval": _iv(law, p, 4),
                    "cells": law.n_points,
                }
            )
    for key in ("deepseek_lr", "deepseek_batch"):
        pub = H.PUBLISHED[key]
        law_rows.append(
            {
                "law": pub["source"],
                "parameter": "a",
                "estimate": f"{pub['a']:.4g}",
                "95% interval": "published",
                "cells": "—",
            }
        )
    pub = H.PUBLISHED["ludziejewski_lr"]
    law_rows.append(
        {
            "law": pub["source"],
            "parameter": "a_N, a_E",
            "estimate": f"{pub['a']:.3g}, {pub['b']:.3g}",
            "95% interval": "published",
            "cells": "—",
        }
    )
    if law_rows:
        tables.append(
            ("Power laws through the cell optima, beside the published ones", pd.DataFrame(law_rows))
        )
    crit_rows = []
    for col, law in an.bcrit.items():
        bp = H.bcrit_params(law)
        iv = bp["alpha_B_interval"]
        crit_rows.append(
            {
                "noise scale": col,
                "B* (tokens)": f"{bp['B_star']:.3g}",
                "B* 95%": _iv(law, "k"),
                "alpha_B": "—" if bp["alpha_B"] is None else f"{bp['alpha_B']:.3g}",
                "alpha_B 95%": "—" if iv is None else f"[{iv[0]:.3g}, {iv[1]:.3g}]",
                "points": law.n_points,
                "runs": int(points.loc[points[col].notna(), "run_id"].nunique()),
            }
        )
    if crit_rows:
        k = H.PUBLISHED["kaplan_bcrit"]
        crit_rows.append(
            {
                "noise scale": k["source"],
                "B* (tokens)": f"{k['B_star']:.3g}",
                "B* 95%": "published",
                "alpha_B": f"{k['alpha_B']:.3g}",
                "alpha_B 95%": "published",
                "points": "—",
                "runs": "—",
            }
        )
        tables.append(("B_crit(L) = B* / L^(1/alpha_B) (Kaplan et al. 2020's form)", pd.DataFrame(crit_rows)))
    if an.ratio is not None:
        r = an.ratio
        tables.append(
            (
                "Routed-expert / shared noise scale at the end of the MoE runs",
                pd.DataFrame(
                    [
                        {
                            "median ratio": f"{r['median']:.3g}",
                            "spread over runs (95%)": f"[{r['interval'][0]:.3g}, {r['interval'][1]:.3g}]",
                            "runs": r["n_runs"],
                            "E/k (Hunyuan's rule assumes this ratio)": ", ".join(
                                f"{x:g}" for x in r["e_over_k"]
                            ),
                        }
                    ]
                ),
            )
        )
    iso = _isoflop_rows(an)
    if iso:
        tables.append(("IsoFLOP allocation on C and on C_min = C/(1 + B/B_crit(L))", pd.DataFrame(iso)))
    if "c_min" in an.runs:
        frac = (an.runs["c_min"] / compute_of(an.runs)).dropna()
        if len(frac):
            an.notes.append(
                f"C_min/C over the runs: median {frac.median():.3f} (range {frac.min():.3f}.."
                f"{frac.max():.3f}): a run at B far below B_crit(L) spends C close to C_min."
            )
    lead = (
        "The learning rate and batch size that minimise the held-out loss in each cell, power laws of "
        "those optima against compute beside DeepSeek LLM's, and the gradient noise scale B_simple "
        "(McCandlish et al. 2018) measured in every run: it should grow as the loss falls, and it sets the "
        "critical batch and C_min."
    )
    sec = Section(
        "hyper",
        "Learning rate, batch and gradient noise",
        lead,
        figures=figures,
        tables=tables,
        notes=list(an.notes),
    )
    sec.notes.append(
        "The laws rest on tiny models on a byte-level corpus over about two decades of compute; their "
        "exponents are comparable with the published ones, their constants (and B* in particular: it "
        "depends on the tokenizer and data) are not."
    )
    return sec, an.to_json()
