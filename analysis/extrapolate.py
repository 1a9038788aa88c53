"""Extrapolation of a fitted law to a preset (default ``hunyuan-large``: 52B activated, 7T tokens).

Reports the predicted loss with its bootstrap interval, and at the preset's compute the compute-optimal
activated size and tokens under the fitted law, beside Hunyuan-Large's own law (Tencent 2024,
arXiv 2411.02265): N_opt = 5.9e-3 C^0.5305, D_opt = 3.2 C^0.50 with C = 9.59 N D + 2.3e8 D (their compute
model, used here only for this comparison).
"""

from __future__ import annotations

import numpy as np

from analysis.fit import FitResult
from analysis.frontier import HUNYUAN_ATT, HUNYUAN_K, frontier
from moelab.errors import MoelabError

HUNYUAN_LAW = {"N": (5.9e-3, 0.5305), "D": (3.2, 0.50)}
WARNING = (
    "absolute losses transfer only between runs on the same data and tokenizer: the predicted loss is for "
    "this lab's corpus and tokenizer, not Hunyuan-Large's; compare exponents and allocations, not loss values"
)


def preset_features(name: str) -> dict:
    """active_params (non-embedding), n_experts, shared_ratio, granularity of a moelab preset."""
    try:
        from moelab.accounting import param_counts
        from moelab.presets import get_preset
    except ImportError as exc:  # the presets module is optional at import time
        raise MoelabError(f"moelab presets are not available ({exc})") from exc
    try:
        cfg = get_preset(name)
    except (KeyError, ValueError) as exc:
        raise MoelabError(str(exc).splitlines()[0] if str(exc) else f"unknown preset {name!r}") from exc
    return {
        "active_params": float(param_counts(cfg).active),
        "n_experts": float(cfg.n_experts),
        "shared_ratio": float(cfg.shared_ratio),
        "granularity": float(cfg.granularity),
    }


def extrapolate(res: FitResult, preset: str = "hunyuan-large", tokens: float = 7e12) -> dict:
    """Predicted loss of ``preset`` on ``tokens``; the compute-optimal allocation at that compute."""
    feats = preset_features(preset)
    N = feats["active_params"]
    config = {k: v for k, v in feats.items() if k != "active_params"}
    row = {"active_params": [N], "tokens": [float(tokens)], **{k: [v] for k, v in config.items()}}
    import pandas as pd

    df = pd.DataFrame(row)
    missing = [c for c in res.law.columns if c not in df.columns]
    if missing:
        raise MoelabError(
            f"law {res.law.name} needs {', '.join(missing)}, which preset {preset} does not define"
        )
    out = {
        "preset": preset,
        "active_params": N,
        "tokens": float(tokens),
        "law": res.law.name,
        "loss": float(res.predict(df)[0]),
        "warning": WARNING,
    }
    if res.bootstrap is not None:
        samples = res.law.predict(res.bootstrap.samples, res.law.features(df))[:, 0]
        lo, hi = res.bootstrap.interval(samples)
        out["loss_interval"] = [float(lo), float(hi)]
    C = HUNYUAN_K * N * tokens + HUNYUAN_ATT * tokens
    out["compute_hunyuan"] = float(C)
    out["paper_law"] = {
        "N_opt": HUNYUAN_LAW["N"][0] * C ** HUNYUAN_LAW["N"][1],
        "D_opt": HUNYUAN_LAW["D"][0] * C ** HUNYUAN_LAW["D"][1],
    }
    if "tokens" in res.law.columns:
        fr = frontier(res, [C], compute="hunyuan", config=config).iloc[0]
        out["fitted_law"] = {k: float(v) for k, v in fr.items() if k != "on_edge"}
    return out


def format_extrapolation(ex: dict) -> str:
    """Plain-text lines for the terminal."""
    lines = [
        f"extrapolation to {ex['preset']}: N = {ex['active_params']:.3g} activated, "
        f"D = {ex['tokens']:.3g} tokens",
        f"  predicted loss ({ex['law']}): {ex['loss']:.4f}"
        + (
            f"  [{ex['loss_interval'][0]:.4f}, {ex['loss_interval'][1]:.4f}]" if "loss_interval" in ex else ""
        ),
        f"  compute C = 9.59 N D + 2.3e8 D = {ex['compute_hunyuan']:.3g} FLOPs",
        f"  Hunyuan-Large law: N_opt = {ex['paper_law']['N_opt']:.3g}, "
        f"D_opt = {ex['paper_law']['D_opt']:.3g}",
    ]
    if "fitted_law" in ex:
        f = ex["fitted_law"]
        iv = ""
        if "N_opt_lo" in f:
            iv = f" (N [{f['N_opt_lo']:.3g}, {f['N_opt_hi']:.3g}], "
            iv += f"D [{f['D_opt_lo']:.3g}, {f['D_opt_hi']:.3g}])"
        lines.append(f"  fitted law:        N_opt = {f['N_opt']:.3g}, D_opt = {f['D_opt']:.3g}{iv}")
    lines.append(f"  warning: {ex['warning']}")
    return "\n".join(lines)


def _finite(x) -> bool:
    return bool(np.isfinite(x))
