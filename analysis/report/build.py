"""Assembling the report: each section is built only when the data supports it, with a sentence saying what to
read from it. ``build_report(results_dir)`` is the library entry point behind ``moelab report``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.report import figures as F
from analysis.report.data import ResultsData, load_results
from analysis.report.fits import Analysis, analyse
from analysis.report.hyper import hyper_section
from analysis.report.published import published_section
from analysis.report.render import Section, write_report_folder

__all__ = ["build_report", "summary_lines"]


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


def _isoflop_section(data: ResultsData) -> tuple[Section | None, list[dict]]:
    fig, minima = F.isoflop(data.ok)
    if fig is None:
        return None, []
    rows = pd.DataFrame(
        [
            {
                "compute C": F.sci(m["flops"]),
                "runs": m["points"],
                "N at minimum": F.sci(m["n_opt"]),
                "loss at minimum": f"{m['loss_min']:.3f}",
                "minimum inside the sizes tried": _fmt(m["inside_range"]),
            }
            for m in minima
        ]
    )
    sec = Section(
        "isoflop",
        "IsoFLOP curves",
        "At a fixed compute budget loss is U-shaped in model size (Chinchilla Approach 2); the diamonds mark "
        "the compute-optimal size, which should move right as compute grows.",
        figures=[("isoflop", fig)],
        tables=[("Parabola minima in log N", rows)] if len(rows) else [],
    )
    if any(not m["inside_range"] for m in minima):
        sec.notes.append(
            "A minimum outside the sizes tried is an extrapolation of the parabola: widen the "
            "ladder at that budget before trusting it."
        )
    return sec, minima


def _moe_section(data: ResultsData, an: Analysis) -> Section | None:
    fig = F.moe_effects(data.ok, an.clark, an.clark_label)
    if fig is None:
        return None
    sec = Section(
        "moe",
        "MoE effects",
        "Each panel changes one MoE knob with the model's other sizes and the tokens fixed: a downward slope "
        "means the knob buys loss at no extra activated compute.",
        figures=[("moe_effects", fig)],
    )
    if an.clark_params:
        sec.notes.append(
            "Clark et al. (2022) fit log L = a·log N + b·log Ê + c·log N·log Ê + d: "
            + ", ".join(f"{k} = {_fmt(v)}" for k, v in an.clark_params.items())
        )
    return sec


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
        f"Laws were fitted without the {ho['run_id'].nunique()} largest-compute runs and asked to predict "
        "them: stars near the diagonal and small bars mean the law extrapolates, not just interpolates.",
        figures=[("heldout", fig)] if fig is not None else [],
        tables=[("Held-out predictions", rows)],
    )


def _params_section(an: Analysis) -> Section | None:
    if not an.laws:
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
                }
            )
    comp = pd.DataFrame(
        [
            {
                "law": law.name,
                "fit points": law.n_fit,
                "held-out runs": law.n_heldout,
                "held-out mean |rel. error|": f"{law.heldout_err:.2%}"
                if law.heldout_err is not None
                else "—",
                "in-sample mean |rel. error|": f"{law.train_err:.2%}" if law.train_err is not None else "—",
                "formula": law.formula,
            }
            for law in sorted(an.laws, key=lambda x: (x.heldout_err is None, x.heldout_err or 0))
        ]
    )
    lead = "Every law's fitted parameters with 95% bootstrap intervals (resampling runs); "
    lead += (
        f"{an.best} predicts the held-out runs best."
        if an.best
        else "no law could be ranked on held-out error."
    )
    return Section(
        "params",
        "Fitted laws",
        lead,
        tables=[("Held-out comparison", comp), ("Parameters", pd.DataFrame(rows))],
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
    return [
        f"best law: {an.best}" if best else "best law: none (too few finished runs to fit)",
        f"held-out error: {best.heldout_err:.2%} mean |relative error| on {best.n_heldout} held-out runs"
        if best and best.heldout_err is not None
        else "held-out error: —",
        f"extrapolated loss at {ex.get('name')}: {ex['loss']:.3f} nats/token"
        + (f" (95% [{ex['loss_lo']:.3f}, {ex['loss_hi']:.3f}])" if ex.get("loss_lo") is not None else "")
        + (
            " — the fit sits on a parameter bound: read it as a warning (see Fitted laws)"
            if _edgy(an, ex)
            else ""
        )
        if ex
        else "extrapolated loss: —",
    ]


def _edgy(an: Analysis, ex: dict) -> bool:
    res = an.results.get(ex.get("law"))
    return bool(res is not None and any("edge" in w or "bound" in w for w in res.warnings))


def build_report(
    results_dir: str | Path,
    out: str | Path | None = None,
    *,
    target: str = "hunyuan-large",
    n_boot: int | None = None,
    max_starts: int | None = None,
    laws: list[str] | None = None,
    data: ResultsData | None = None,
) -> tuple[Path, list[str]]:
    """Write ``results_dir/report/`` (or ``out``) and return (folder, summary lines).

    ``n_boot``: bootstrap resamples per law (default :data:`analysis.report.fits.DEFAULT_BOOT`);
    ``max_starts``: cap on each law's grid of L-BFGS starts (default: the law's own grid);
    ``laws``: the registered laws to fit (default: all of them); ``data``: report data already loaded (a table
    of runs, :mod:`analysis.report.table`) instead of reading ``results_dir``."""
    data = load_results(results_dir) if data is None else data
    an = analyse(data, target=target, n_boot=n_boot, max_starts=max_starts, laws=laws)
    sections: list[Section | None] = [_sweep_section(data), _curves_section(data), _compute_section(data, an)]
    iso, minima = _isoflop_section(data)
    hyp, hyper_fits = hyper_section(data, n_boot=n_boot or 200)
    pub, published_fits = published_section(data.ok, an)
    sections += [
        iso,
        _moe_section(data, an),
        _heldout_section(an, data.runs),
        _params_section(an),
        pub,
        _extrapolation_section(an),
        _router_section(data),
        hyp,
        _repro_section(data),
    ]
    present = [s for s in sections if s is not None]
    summary = summary_lines(an)
    fits = an.to_json()
    fits["isoflop_minima"] = minima
    fits["hyper"] = hyper_fits
    fits["published"] = published_fits
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
