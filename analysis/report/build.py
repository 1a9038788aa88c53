"""Assembling the report: each section is built only when the data supports it, with a sentence saying what to
read from it. ``build_report(results_dir)`` is the library entry point behind ``moelab report``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.report import figures as F
from analysis.report.claims import claims_section, isoflop_rows
from analysis.report.data import ResultsData, load_results
from analysis.report.fits import Analysis, analyse
from analysis.report.hyper import hyper_section
from analysis.report.published import published_section
from analysis.report.render import Section, write_report_folder
from analysis.report.reproduction import Reproduction, reproduction_section
from analysis.report.routers import routers_section
from analysis.twins import gap_trend, moe_vs_dense
from analysis.validate import ranking_rows

__all__ = ["SECTIONS", "build_report", "summary_lines"]


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}" if abs(int(v)) < 1e7 else F.sci(float(v), digits)
    if isinstance(v, float | np.floating):
        if pd.isna(v):
            return "—"
        v = float(v)
        return f"{v:.{digits}f}" if 1e-3 <= abs(v) < 1e4 else F.sci(v, digits)
    return "—" if pd.isna(v) else str(v)


def _sweep_section(data: ResultsData) -> Section:
    runs = data.runs
    counts = runs["status"].value_counts()
    cols = [
        ("run", "run_id"),
        ("status", "status"),
        ("E", "n_experts"),
        ("k", "top_k"),
        ("shared", "n_shared_experts"),
        ("shared_ratio", "shared_ratio"),
        ("G", "granularity"),
        ("d_model", "d_model"),
        ("layers", "n_layers"),
        ("activated N", "active_params"),
        ("total N", "total_params"),
        ("tokens D", "tokens"),
        ("FLOPs C", "flops"),
        ("loss", "loss"),
        ("train loss", "train_loss"),
    ]
    cols = [(a, b) for a, b in cols if b in runs]
    order = runs.sort_values([c for c in ("flops", "active_params") if c in runs])
    table = pd.DataFrame(
        {
            label: [
                (
                    str(v)[:10]
                    if col == "run_id"
                    else _fmt(v, 2 if col in ("shared_ratio", "granularity") else 3)
                )
                for v in order[col]
            ]
            for label, col in cols
        }
    )
    for big in ("activated N", "total N", "tokens D", "FLOPs C"):
        if big in table:
            table[big] = [F.sci(float(v)) if pd.notna(v) else "—" for v in order[dict(cols)[big]]]
    status = ", ".join(f"{n} {s}" for s, n in counts.items())
    return Section(
        "sweep",
        "The sweep",
        f"{len(runs)} runs ({status}); each row is one trained model with its activated and total "
        "non-embedding parameters, training tokens and compute, and final held-out loss in nats/token.",
        tables=[("", table)],
    )


def _curves_section(data: ResultsData) -> Section | None:
    fig = F.training_curves(data.runs, data.curves)
    if fig is None:
        return None
    return Section(
        "curves",
        "Training curves",
        ("Held-out" if F.curve_column(data.curves) == "eval_loss" else "Training")
        + " loss falls with tokens seen; at equal tokens, lines with more experts (lighter colours) "
        "should sit lower if extra routed capacity helps.",
        figures=[("training_curves", fig)],
    )


def _compute_section(data: ResultsData, an: Analysis) -> Section | None:
    fig = F.loss_vs_compute(data.ok, an.frontier, an.heldout_ids, an.best or "fitted law")
    if fig is None:
        return None
    lead = (
        "Each point is a finished run; the lower envelope is the best loss the sweep reached per FLOP, and "
        "the red line is the fitted law's compute-optimal frontier, the loss a perfectly sized model would "
        "reach at each compute."
    )
    if an.frontier is None:
        lead = "Each point is a finished run; the lower envelope is the best loss reached per FLOP."
    return Section("compute", "Loss against compute", lead, figures=[("loss_vs_compute", fig)])


def _isoflop_section(data: ResultsData, an: Analysis) -> Section | None:
    m = an.isoflop_minima
    if m is None or m.empty:
        return None
    fig = F.isoflop(data.ok, m)
    rows = pd.DataFrame(
        {
            "architecture": m["arch"],
            "compute C": m["C"].map(F.sci),
            "runs": m["n_runs"],
            "N at minimum": m["N_opt"].map(F.sci),
            "D at minimum (the budget's own cost)": m["D_opt"].map(F.sci),
            "loss at minimum": m["L_min"].map(lambda v: f"{v:.3f}"),
            "minimum inside the sizes tried": m["inside"].map(_fmt),
        }
    )
    tables = [("Parabola minima in log N (analysis.isoflop)", rows)]
    exps = isoflop_rows(an, an.extrapolation["name"] if an.extrapolation else None)
    if exps:
        caption = "Allocation exponents through the interior minima, 95% bootstrap intervals"
        tables.append((caption, pd.DataFrame(exps)))
    sec = Section(
        "isoflop",
        "IsoFLOP curves",
        "At a fixed compute budget loss is U-shaped in model size (Chinchilla Approach 2); the diamonds mark "
        "each budget's loss-minimising size, and the power laws through them give how the compute-optimal "
        "N and D grow with compute.",
        figures=[("isoflop", fig)] if fig is not None else [],
        tables=tables,
    )
    if not m["inside"].all():
        sec.notes.append(
            "A minimum outside the sizes tried is an extrapolation of the parabola and is left out of the "
            "power laws: widen the size grid at that budget."
        )
    return sec


def _moe_section(data: ResultsData, an: Analysis) -> Section | None:
    clark = an.results.get("clark")
    curve = None
    if clark is not None:

        def curve(e, g, _res=clark):
            n = float(g["active_params"].median())
            return np.asarray(
                _res.predict(pd.DataFrame({"active_params": np.full(len(e), n), "n_experts": e}))
            )

    fig = F.moe_effects(data.ok, curve, "Clark et al. (2022) law fitted to the sweep", an.clark_tokens)
    pairs = moe_vs_dense(data.ok)
    twins = _twins_table(pairs)
    if fig is None and twins is None:
        return None
    sec = Section(
        "moe",
        "MoE effects",
        "Each panel changes one MoE knob with the model's other sizes and the tokens fixed: a downward slope "
        "means the knob buys loss at no extra activated compute.",
        figures=[("moe_effects", fig)] if fig is not None else [],
    )
    if twins is not None:
        sec.tables.append((
            "Each MoE run beside the dense run of the same nominal N, D and seed (analysis.twins): held-out "
            "loss in nats/token, nothing fitted; a negative difference means the MoE run is ahead. Rows "
            "that differ only in seed show the noise a single difference is read against.",
            twins,
        ))  # fmt: skip
    sec.notes.extend(_trend_notes(pairs))
    if clark is not None:
        where = clark.domain.text if clark.domain is not None else "all runs"
        sec.notes.append(
            "Clark et al. (2022) fit log L = a·log N + b·log Ê + c·log N·log Ê + d, a law without a data "
            f"term; it was fitted on {where}, and its lines are drawn only at that token budget: "
            + ", ".join(f"{k} = {_fmt(v)}" for k, v in clark.params.items())
        )
    return sec


def _trend_notes(t: pd.DataFrame) -> list[str]:
    """One sentence per MoE arm with enough twins (``t``: ``analysis.twins.moe_vs_dense``'s table): how its
    gap to dense moves with D and N (``analysis.twins.gap_trend``)."""
    notes = []
    arms = t.groupby(["E", "top_k", "shared", "G", "expert_lr_scale"], dropna=False)
    for (e, k, shared, g, elr), arm in arms:
        tr = gap_trend(arm)
        if tr is None:
            continue

        def ci(key, tr=tr):
            return f"{tr[key]:+.3f} [{tr[key + '_95'][0]:+.3f}, {tr[key + '_95'][1]:+.3f}]"

        be, (be_lo, be_hi) = tr["breakeven_D_per_total_N"], tr["breakeven_D_per_total_N_95"]
        name = f"E = {e} top-{k}" + (f", {shared} shared" if shared else "")
        name += "" if not np.isfinite(g) or np.isclose(g, 1.0) else f", G = {_fmt(g, 2)}"
        name += "" if not np.isfinite(elr) or np.isclose(elr, 1.0) else f", expert LR x {_fmt(elr, 3)}"
        notes.append(
            f"{name}, {tr['n']} twins (D {arm['D'].min():.2g}-{arm['D'].max():.2g}, N "
            f"{arm['N'].min():.2g}-{arm['N'].max():.2g}): the gap to dense moves by {ci('per_decade_D')} "
            f"nats per decade of training tokens and {ci('per_decade_N')} per decade of activated size "
            f"(least squares, pair bootstrap 95%); against tokens per total parameter "
            f"{ci('per_decade_D_per_total_N')} per decade (R² {tr['r2_D_per_total_N']:.2f}), zero at "
            f"{be:.2g} [{be_lo:.2g}, {be_hi:.2g}] tokens per total parameter. A fit to these twins, not a "
            "law: it says where in this span the MoE arm led, not why."
        )
    return notes


def _twins_table(t: pd.DataFrame) -> pd.DataFrame | None:
    """The report's table of ``t`` (``analysis.twins.moe_vs_dense``'s), None where it is empty."""
    if t.empty:
        return None
    return pd.DataFrame({
        "E": t["E"], "k": t["top_k"], "shared": t["shared"], "G": t["G"].map(lambda v: _fmt(v, 2)),
        "expert LR x": t["expert_lr_scale"].map(lambda v: _fmt(v, 3)),
        "N": t["N"].map(lambda v: f"{v:.2g}"), "D": t["D"].map(lambda v: f"{v:.2g}"), "seed": t["seed"],
        "dense": t["dense"].map(lambda v: f"{v:.4f}"), "MoE": t["moe"].map(lambda v: f"{v:.4f}"),
        "MoE - dense": t["moe_minus_dense"].map(lambda v: f"{v:+.4f}"),
    })  # fmt: skip


def _heldout_section(an: Analysis, runs: pd.DataFrame | None = None) -> Section | None:
    if an.predictions is None or an.predictions.empty or not an.predictions["heldout"].any():
        return None
    fig = F.heldout(an.predictions, runs)
    ho = an.predictions[an.predictions["heldout"]].copy()
    ho["rel"] = (ho["predicted"] - ho["observed"]) / ho["observed"]
    by_id = None if runs is None else runs.drop_duplicates("run_id").set_index("run_id")

    def knobs(run_id: str) -> str:
        return F.run_label(by_id.loc[run_id]) if by_id is not None and run_id in by_id.index else "—"

    rows = pd.DataFrame(
        {
            "law": ho["law"],
            "run": ho["run_id"].str[:10],
            "E, N, D": ho["run_id"].map(knobs),
            "observed": ho["observed"].map(lambda v: f"{v:.4f}"),
            "predicted": ho["predicted"].map(lambda v: f"{v:.4f}"),
            "relative error": ho["rel"].map(lambda v: f"{v:+.2%}"),
        }
    )
    return Section(
        "heldout",
        "Held-out validation",
        f"Laws were fitted without the {ho['run_id'].nunique()} runs at the top of the compute range of each "
        "stratum (dense and MoE) and asked to predict them, each law on the runs of its own domain: markers "
        "near the diagonal and small bars mean the law extrapolates, not just interpolates.",
        figures=[("heldout", fig)] if fig is not None else [],
        tables=[("Held-out predictions", rows)],
    )


def _params_section(an: Analysis) -> Section | None:
    if not an.laws or an.ranking is None:
        return None
    rows = []
    for law in an.laws:
        for name, value in law.params.items():
            lo, hi = law.intervals.get(name, (None, None))
            rows.append(
                {
                    "law": law.name + (" (best)" if law.name == an.best else ""),
                    "parameter": name,
                    "estimate": _fmt(value, 4),
                    "95% interval": f"[{_fmt(lo, 4)}, {_fmt(hi, 4)}]" if lo is not None else "—",
                    "on a bound of the fit": "YES: not an estimate" if name in law.on_bound else "no",
                }
            )
    lead = (
        "Every law ranked on the same held-out runs (moelab fit --compare prints the same table), then its "
        "fitted parameters with 95% bootstrap intervals (resampling runs); "
    )
    lead += (
        f"{an.best} predicts the held-out runs best."
        if an.best and an.ranking.basis == "held-out"
        else "no law could be ranked on held-out error."
    )
    return Section(
        "params",
        "Fitted laws",
        lead,
        tables=[("Held-out comparison", ranking_rows(an.ranking)), ("Parameters", pd.DataFrame(rows))],
        notes=an.notes,
    )


def _extrapolation_section(an: Analysis) -> Section | None:
    ex = an.extrapolation
    if not ex:
        return None
    fig = F.extrapolation(an.frontier_far, ex, an.isoflop_points) if an.frontier_far is not None else None
    rows = [
        {
            "quantity": f"predicted loss ({ex.get('law', an.best)})",
            "value": f"{ex['loss']:.3f} nats/token, 95% [{ex['loss_lo']:.3f}, {ex['loss_hi']:.3f}]"
            if ex.get("loss_lo") is not None
            else f"{ex['loss']:.3f} nats/token",
        },
    ]
    rows = ex.get("rows", []) + rows
    name = ex.get("name", "target")
    return Section(
        "extrapolation",
        f"Extrapolation to {name}",
        f"The best law carried {ex.get('decades', '?')} decades of compute beyond the sweep to {name}: "
        "read the interval, not the point, and compare the fitted compute-optimal allocation with the "
        "paper's own law (dashed) and the paper's choice (star).",
        figures=[("extrapolation", fig)] if fig is not None else [],
        tables=[("", pd.DataFrame(rows))],
        notes=ex.get("notes", []),
    )


def _router_section(data: ResultsData) -> Section | None:
    if "n_experts" not in data.runs or not (data.runs["n_experts"] > 1).any():
        return None
    fig = F.router_health(data.runs, data.expert_load)
    if fig is None:
        return None
    return Section(
        "router",
        "Router health",
        "A healthy router spreads tokens evenly (the heat map stays near 1× the uniform share) and drops few "
        "tokens; recycled tokens were re-routed to an expert with room rather than dropped.",
        figures=[("router_health", fig)],
    )


def _repro_section(data: ResultsData) -> Section:
    prov = {k: v for k, v in data.provenance.items() if k != "sweep_yaml"}
    rows = pd.DataFrame([{"item": k, "value": "—" if v is None else str(v)} for k, v in prov.items()])
    return Section(
        "repro",
        "Reproducibility",
        "What produced these numbers: the same sweep file at this commit on this corpus reproduces them.",
        tables=[("", rows)],
        pre=data.provenance.get("sweep_yaml"),
    )


def summary_lines(an: Analysis) -> list[str]:
    """The three-line summary printed by ``moelab demo`` and shown at the top of the report."""
    best = next((law for law in an.laws if law.name == an.best), None)
    ex = an.extrapolation
    if best is not None and best.heldout_err is not None and best.ranked:
        iv = best.heldout_interval
        held = (
            f"held-out error: {best.heldout_err:.2%} mean |relative error|"
            + (f" (95% [{iv[0]:.2%}, {iv[1]:.2%}])" if iv else "")
            + f" on {best.n_heldout} held-out runs at the top of the compute range (dense and MoE)"
        )
    else:
        held = "held-out error: —"
    line3 = "extrapolated loss: —"
    if ex:
        line3 = f"extrapolated loss at {ex.get('name')}: {ex['loss']:.3f} nats/token" + (
            f" (95% [{ex['loss_lo']:.3f}, {ex['loss_hi']:.3f}])" if ex.get("loss_lo") is not None else ""
        )
        if ex.get("on_bound"):
            line3 += f" — {', '.join(ex['on_bound'])} of {ex['law']} on a bound of the fit: not an estimate"
    if best is None and an.laws:
        line1 = "best law: none ranked (no fitted law covers every held-out run: see Fitted laws)"
    elif best is None:
        line1 = "best law: none (too few finished runs to fit)"
    else:
        line1 = f"best law: {an.best}" + ("" if best.ranked else " (in-sample: nothing held out)")
    return [line1, held, line3]


#: The report's sections in order: (key, builder). A builder takes (ResultsData, Analysis) and returns a
#: Section or None (left out). Another module adds its section with one line here, e.g.
#: ``("hyper", hyper.section)`` after ``from analysis.report import hyper``.
SECTIONS: list[tuple[str, Callable[[ResultsData, Analysis], Section | None]]] = [
    ("claims", claims_section),
    ("sweep", lambda data, an: _sweep_section(data)),
    ("curves", lambda data, an: _curves_section(data)),
    ("compute", _compute_section),
    ("isoflop", _isoflop_section),
    ("moe", _moe_section),
    ("heldout", lambda data, an: _heldout_section(an, data.runs)),
    ("params", lambda data, an: _params_section(an)),
    ("published", lambda data, an: _published(data, an)),
    ("extrapolation", lambda data, an: _extrapolation_section(an)),
    ("router", lambda data, an: _router_section(data)),
    ("routers", lambda data, an: _routers(data, an)),
    ("hyper", lambda data, an: _hyper(data, an)),
    ("repro", lambda data, an: _repro_section(data)),
]


def _published(data: ResultsData, an: Analysis) -> Section | None:
    """analysis.report.published's section; its fits.json entry goes to ``an.extra["published"]``."""
    sec, fits = published_section(data.ok, an)
    an.extra["published"] = fits
    return sec


def _hyper(data: ResultsData, an: Analysis) -> Section | None:
    """analysis.report.hyper's section; its fits.json entry goes to ``an.extra["hyper"]``."""
    sec, fits = hyper_section(data, n_boot=an.n_boot or 200)
    an.extra["hyper"] = fits
    return sec


def _routers(data: ResultsData, an: Analysis) -> Section | None:
    """analysis.report.routers's section; its fits.json entry goes to ``an.extra["routers"]``."""
    sec, fits = routers_section(data, n_boot=an.n_boot or 200)
    an.extra["routers"] = fits
    return sec


def build_report(
    results_dir: str | Path,
    out: str | Path | None = None,
    *,
    target: str = "hunyuan-large",
    n_boot: int | None = None,
    max_starts: int | None = None,
    laws: list[str] | None = None,
    data: ResultsData | None = None,
    reproduction: Reproduction | None = None,
) -> tuple[Path, list[str]]:
    """Write ``results_dir/report/`` (or ``out``) and return (folder, summary lines).

    ``n_boot``: bootstrap resamples per law (default :data:`analysis.report.fits.DEFAULT_BOOT`);
    ``max_starts``: cap on each law's grid of L-BFGS starts (default: the law's own grid);
    ``laws``: the registered laws to fit (default: all of them); ``data``: report data already loaded (a table
    of runs, :mod:`analysis.report.table`) instead of reading ``results_dir``; ``reproduction``: fresh runs
    beside their committed twins (``moelab demo``), shown first with its verdict atop the summary."""
    data = load_results(results_dir) if data is None else data
    an = analyse(data, target=target, n_boot=n_boot, max_starts=max_starts, laws=laws)
    present = [sec for _, build in SECTIONS if (sec := build(data, an)) is not None]
    summary = summary_lines(an)
    if reproduction is not None:
        present.insert(0, reproduction_section(reproduction))
        summary.insert(0, reproduction.line)
        an.extra["reproduction"] = reproduction.to_json()
    fits = an.to_json() | an.extra
    if an.isoflop_minima is not None:
        fits["isoflop_minima"] = an.isoflop_minima.to_dict(orient="records")
    fits["sections"] = [s.key for s in present]
    fits["summary"] = summary
    fits["n_runs"] = int(len(data.runs))
    fits["n_succeeded"] = int(len(data.ok))
    out = Path(out) if out is not None else Path(results_dir) / "report"
    title = f"moelab scaling-law report: {data.sweep_name}"
    subtitle = (
        f"{len(data.runs)} runs, {len(data.ok)} with a finite held-out loss · results folder "
        f"{data.provenance.get('results_dir')}"
    )
    write_report_folder(out, title, subtitle, summary, present, fits)
    return out, summary
