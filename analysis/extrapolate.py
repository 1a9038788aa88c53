"""Extrapolation of a fitted law to a preset (default ``hunyuan-large``).

Reports the predicted loss with its bootstrap interval and, at the preset's compute, the compute-optimal
activated size and tokens under the fitted law beside the paper's own allocation law. The paper's facts
(training tokens, compute model, allocation law) live on the preset (``moelab.presets.paper_facts``); the
paper's law is evaluated at the paper's own compute model by :func:`paper_allocation`, the one function every
comparison uses (Hunyuan-Large fitted its law on C = k N D + a D, not on 6 N D: the two disagree by ~20% in
N_opt at 52B / 7T).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.fitting import FitResult
from analysis.frontier import frontier
from moelab.accounting import param_counts, train_flops_per_token
from moelab.errors import ConfigError, MoelabError
from moelab.presets import PAPER_FACTS, get_preset, paper_facts

WARNING = (
    "absolute losses transfer only between runs on the same data and tokenizer: the predicted loss is for "
    "this lab's corpus and tokenizer, not the preset's; compare exponents and allocations, not loss values"
)


def _preset(name: str):
    try:
        return get_preset(name)
    except ConfigError as exc:
        raise MoelabError(str(exc).splitlines()[0]) from None


def preset_features(name: str) -> dict:
    """active_params (activated, non-embedding), n_experts, shared_ratio, granularity, top_k of a preset."""
    cfg = _preset(name)
    return {
        "active_params": float(param_counts(cfg).active),
        "n_experts": float(cfg.n_experts),
        "shared_ratio": float(cfg.shared_ratio),
        "granularity": float(cfg.granularity),
        "top_k": float(cfg.top_k),
    }


def paper_allocation(preset: str, n_active=None, tokens=None, *, compute=None) -> dict:
    """The paper's compute-optimal allocation at the paper's own compute model.

    Give either ``compute`` (FLOPs in the paper's model) or ``n_active`` and ``tokens`` (the compute is then
    the paper's C of that pair). Returns ``{"compute", "N_opt", "D_opt"}`` (arrays broadcast like the input).
    """
    facts = paper_facts(preset)
    if compute is None:
        if n_active is None or tokens is None:
            raise MoelabError("paper_allocation needs compute, or n_active and tokens")
        compute = facts.compute(n_active, tokens)
    n_opt, d_opt = facts.allocation(compute)
    return {"compute": np.asarray(compute, np.float64), "N_opt": n_opt, "D_opt": d_opt}


def extrapolate(res: FitResult, preset: str = "hunyuan-large", tokens: float | None = None) -> dict:
    """Predicted loss of ``preset`` on ``tokens`` (default: the paper's training tokens) and, for a preset
    with paper facts, the compute-optimal allocation of the fitted law and of the paper's law at the paper's
    compute of (N, D)."""
    cfg = _preset(preset)
    facts = PAPER_FACTS.get(preset)
    if tokens is None:
        if facts is None:
            raise MoelabError(
                f"--tokens: preset {preset!r} has no published training tokens; give the tokens to predict at"
            )
        tokens = facts.train_tokens
    if not tokens > 0:
        raise MoelabError(f"--tokens must be > 0, got {tokens!r}")
    feats = preset_features(preset)
    N = feats["active_params"]
    config = {k: v for k, v in feats.items() if k != "active_params"}
    df = pd.DataFrame({"active_params": [N], "tokens": [float(tokens)]} | {k: [v] for k, v in config.items()})
    missing = [c for c in res.law.columns if c not in df.columns]
    if missing:
        raise MoelabError(
            f"law {res.law.name} needs {', '.join(missing)}, which preset {preset} does not define"
        )
    counts = param_counts(cfg)
    out = {
        "preset": preset,
        "active_params": N,
        "total_params": float(counts.total),
        "tokens": float(tokens),
        "law": res.law.name,
        "loss": float(res.predict(df)[0]),
        "config": config,
        "compute_accounting": float(train_flops_per_token(cfg, cfg.max_seq_len) * tokens),
        "seq_len": int(cfg.max_seq_len),
        "warning": WARNING,
    }
    if res.bootstrap is not None:
        samples = res.law.predict(res.bootstrap.samples, res.law.features(df))[:, 0]
        lo, hi = res.bootstrap.interval(samples)
        out["loss_interval"] = [float(lo), float(hi)]
    if facts is None:
        return out
    paper = paper_allocation(preset, N, tokens)
    C = float(paper["compute"])
    out["compute_paper"] = C
    out["paper_source"] = facts.source
    out["paper_law"] = {"N_opt": float(paper["N_opt"]), "D_opt": float(paper["D_opt"])}
    out["paper_exponents"] = {"a": facts.n_opt[1], "b": facts.d_opt[1]}
    if "tokens" in res.law.columns:
        fr = frontier(res, [C], compute=preset, config=config).iloc[0]
        out["fitted_law"] = {k: float(v) for k, v in fr.items() if k != "on_edge"}
        out["fitted_law"]["on_edge"] = bool(fr.get("on_edge", False))
    return out


def format_extrapolation(ex: dict) -> str:
    """Plain-text lines for the terminal."""
    iv = ex.get("loss_interval")
    lines = [
        f"extrapolation to {ex['preset']}: N = {ex['active_params']:.3g} activated, "
        f"D = {ex['tokens']:.3g} tokens",
        f"  predicted loss ({ex['law']}): {ex['loss']:.4f}" + (f"  [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""),
    ]
    if "compute_paper" in ex:
        p = ex["paper_law"]
        lines += [
            f"  compute by the paper's model ({ex['paper_source']}): C = {ex['compute_paper']:.3g} FLOPs",
            f"  the paper's law at that C: N_opt = {p['N_opt']:.3g}, D_opt = {p['D_opt']:.3g}",
        ]
    if "fitted_law" in ex:
        f = ex["fitted_law"]
        iv = ""
        if "N_opt_lo" in f:
            iv = f" (N [{f['N_opt_lo']:.3g}, {f['N_opt_hi']:.3g}], "
            iv += f"D [{f['D_opt_lo']:.3g}, {f['D_opt_hi']:.3g}])"
        edge = "  (on the edge of the search grid: no interior optimum)" if f.get("on_edge") else ""
        lines.append(f"  fitted law at that C: N_opt = {f['N_opt']:.3g}, D_opt = {f['D_opt']:.3g}{iv}{edge}")
    lines.append(f"  warning: {ex['warning']}")
    return "\n".join(lines)
