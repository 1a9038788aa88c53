"""The report's words: what these runs can and cannot claim, in sentences built only from measured quantities
(the spans of the runs, the held-out check and its interval, the distance to the target, the IsoFLOP exponents
with their intervals beside the paper's, the parameters on a bound). No sentence gives a cause that was not
measured: a shortfall is stated as a number and a span, not explained by the size of the models."""

from __future__ import annotations

import math

import numpy as np

from analysis.report.fits import Analysis
from analysis.report.render import Section
from moelab.presets import PAPER_FACTS

__all__ = ["claims_section", "isoflop_rows"]


def _dec(span) -> float:
    lo, hi = span
    return math.log10(hi / lo) if lo > 0 and hi > 0 else float("nan")


def _iv(iv: dict | None, k: str) -> str:
    if not iv or k not in iv or not all(np.isfinite(iv[k])):
        return "no interval"
    return f"95% [{iv[k][0]:.3f}, {iv[k][1]:.3f}]"


def isoflop_rows(an: Analysis, target: str | None) -> list[dict]:
    """The IsoFLOP exponents per architecture (runs' compute, and the target paper's compute model) beside
    the paper's own exponents."""
    rows = []
    for label, res in (
        ("this sweep, C by moelab.accounting", an.isoflop),
        (f"this sweep, C by {target}'s compute model", an.isoflop_paper),
    ):
        if res is None:
            continue
        for arch, v in res.per_arch.items():
            iv = res.arch_intervals(arch)
            rows.append(
                {
                    "fit": label,
                    "architecture (E/k/shared/G/r)": arch,
                    "budgets": v["n_budgets"],
                    "resamples with a power law": f"{res.n_valid(arch)} of "
                    f"{0 if v.get('samples') is None else len(v['samples'])}",
                    "a (N_opt ~ C^a)": f"{v['params']['a']:.3f}",
                    "a: 95% interval": _iv(iv, "a"),
                    "b (D_opt ~ C^b)": f"{v['params']['b']:.3f}",
                    "b: 95% interval": _iv(iv, "b"),
                }
            )
    facts = PAPER_FACTS.get(target or "")
    if facts is not None and rows:
        rows.append(
            {
                "fit": f"{target} paper ({facts.source}), its compute model, C {facts.fit_compute[0]:.2g}-"
                f"{facts.fit_compute[1]:.2g}",
                "architecture (E/k/shared/G/r)": "its own family",
                "budgets": "—",
                "resamples with a power law": "—",
                "a (N_opt ~ C^a)": f"{facts.n_opt[1]:g}",
                "a: 95% interval": "not published",
                "b (D_opt ~ C^b)": f"{facts.d_opt[1]:g}",
                "b: 95% interval": "not published",
            }
        )
    return rows


def claims_section(data, an: Analysis) -> Section | None:
    """ "What these runs can and cannot claim": the report's paragraph in words."""
    s = an.scope
    if not s:
        return None
    paras = []
    experts = f" with E = {', '.join(map(str, s['experts']))}" if s.get("experts") else ""
    paras.append(
        f"{s['n_runs']} finished runs ({s['n_dense']} dense, {s['n_moe']} MoE{experts}) span "
        f"N = {s['N'][0]:.3g}..{s['N'][1]:.3g} activated parameters ({_dec(s['N']):.2f} decades), "
        f"D = {s['D'][0]:.3g}..{s['D'][1]:.3g} tokens ({_dec(s['D']):.2f} decades) and "
        f"C = {s['C'][0]:.3g}..{s['C'][1]:.3g} training FLOPs by moelab.accounting ({_dec(s['C']):.2f} "
        "decades). Every statement below holds inside these spans unless it says otherwise."
    )
    nc = an.n_convention
    text = nc.get("text", "")
    if "embedding_share" in nc:
        lo, hi = nc["embedding_share"]
        text += (
            f". At these sizes the embedding and output layer are {lo:.0%}-{hi:.0%} of the count that "
            "includes them, so exponents fitted here belong to this convention and change if it changes"
        )
    if nc.get("shift"):
        moved = [
            f"{r['parameter']} from {r['value']:.3g} to {r['with_embedding']:.3g} (95% interval "
            f"[{r['lo']:.3g}, {r['hi']:.3g}]{', outside it' if r['inside'] is False else ''})"
            for r in nc["shift"]
        ]
        outside = [r["parameter"] for r in nc["shift"] if r["inside"] is False]
        text += (
            f". Refitted with N counting the embedding, {nc['law']} moves "
            + "; ".join(moved)
            + ": "
            + (
                f"the convention changes {', '.join(outside)} by more than the runs' own uncertainty"
                if outside
                else "every exponent stays inside its interval: these runs cannot tell the conventions apart"
            )
        )
    paras.append(text + ".")
    best = next((x for x in an.laws if x.name == an.best), None)
    r = an.ranking
    if best is not None and best.ranked and best.heldout_err is not None and r is not None:
        ok = data.ok
        held = ok[ok["run_id"].isin(an.heldout_ids)]
        fit_max = float(ok.loc[~ok["run_id"].isin(an.heldout_ids), "flops"].max())
        ho_max = float(held["flops"].max())
        iv = best.heldout_interval
        paras.append(
            f"The laws were fitted without the top {r.fraction:.0%} of compute of each stratum (dense and "
            f"MoE) and asked to predict those {len(held)} runs, which reach {ho_max:.3g} FLOPs, "
            f"{math.log10(ho_max / fit_max):.2f} decades beyond the largest fitted run. {best.name} predicts "
            f"them with a mean |relative error| of {best.heldout_err:.2%}"
            + (f" (95% [{iv[0]:.2%}, {iv[1]:.2%}])" if iv else "")
            + f", median {best.heldout_median:.2%}, max {best.heldout_max:.2%}. That is the distance over "
            "which these runs test an extrapolation."
        )
        checked = math.log10(ho_max / fit_max)
    else:
        checked = None
        paras.append(
            "No law could be ranked on held-out runs at the top of the compute range, so these runs support "
            "no claim about how any law extrapolates."
        )
    ex = an.extrapolation
    if ex:
        far = f"{ex['decades']:.1f} decades of compute beyond the largest run here"
        if checked:
            far += f", {ex['decades'] / checked:.0f} times the distance the held-out check covers"
        paras.append(
            f"{ex['name']} ({ex['active_params']:.3g} activated parameters, {ex['tokens']:.3g} tokens) takes "
            f"{ex['flops_moelab']:.3g} FLOPs by moelab.accounting: {far}. Its predicted loss is therefore "
            "not tested by any run here, and it is in nats per token of this corpus and tokenizer, which do "
            "not compare with the paper's."
        )
    facts = PAPER_FACTS.get(ex["name"]) if ex else None
    if an.isoflop is not None:
        res = an.isoflop
        v = res.per_arch[res.arch]
        iv = res.arch_intervals(res.arch)
        n_boot = 0 if v.get("samples") is None else len(v["samples"])
        line = (
            f"The IsoFLOP minima of architecture {res.arch} give N_opt ~ C^a with a = {v['params']['a']:.3f} "
            f"({_iv(iv, 'a')}) and D_opt ~ C^b with b = {v['params']['b']:.3f} ({_iv(iv, 'b')}) over "
            f"{v['n_budgets']} budgets; {res.n_valid(res.arch)} of {n_boot} bootstrap resamples gave two "
            "budgets with an interior minimum."
        )
        if facts is not None and an.isoflop_paper is not None:
            p = an.isoflop_paper
            pv, piv = p.per_arch[p.arch], p.arch_intervals(p.arch)
            has_iv = bool(piv) and all(np.isfinite(piv[k]).all() for k in ("a", "b"))
            inside = [
                k
                for k, paper in (("a", facts.n_opt[1]), ("b", facts.d_opt[1]))
                if has_iv and piv[k][0] <= paper <= piv[k][1]
            ]
            m = an.isoflop_minima
            m = m[m["inside"] & (m["arch"] == p.arch)]
            share = facts.compute_per_token / facts.cost_per_token(m["N_opt"].to_numpy())
            line += (
                f" In the paper's compute model they are a = {pv['params']['a']:.3f} ({_iv(piv, 'a')}) and "
                f"b = {pv['params']['b']:.3f} ({_iv(piv, 'b')}), beside the paper's {facts.n_opt[1]:g} and "
                f"{facts.d_opt[1]:g}, which were fitted over {facts.fit_compute[0]:.2g}-"
                f"{facts.fit_compute[1]:.2g} FLOPs, "
                f"{math.log10(facts.fit_compute[0] / s['C'][1]):.1f} decades above the largest run here. "
                f"At these minima the paper's per-token term ({facts.compute_per_token:.2g}·D) is "
                f"{share.min():.0%}-{share.max():.0%} of the paper's C"
                + (", so in that model C grows with D more than with N·D. " if share.min() > 0.5 else ". ")
                + (
                    "Without intervals these exponents cannot be compared with the paper's."
                    if not has_iv
                    else f"The paper's value lies inside the interval for {' and '.join(inside)}."
                    if inside
                    else "The paper's values lie outside both intervals."
                )
            )
        paras.append(line)
    elif an.isoflop_minima is not None:
        paras.append(
            "The IsoFLOP profiles do not give two budgets of one architecture with an interior minimum, so "
            "these runs give no allocation exponent."
        )
    bound = [(x.name, x.on_bound) for x in an.laws if x.on_bound]
    if bound:
        paras.append(
            "Parameters that sit on a bound of their fit are not estimates and no statement here rests on "
            "them: " + "; ".join(f"{n}: {', '.join(b)}" for n, b in bound) + "."
        )
    elif an.laws:
        paras.append("No fitted parameter of any law sits on a bound of its fit.")
    if an.laws and not any(x.intervals for x in an.laws):
        paras.append(
            "No bootstrap was run: no parameter or exponent has an interval, so none can be compared with a "
            "published value."
        )
    sec = Section(
        "claims",
        "What these runs can and cannot claim",
        "The spans the runs cover, how far the laws were checked beyond them, and how far the target lies: "
        "read every number below against these.",
    )
    sec.paragraphs = paras
    return sec
