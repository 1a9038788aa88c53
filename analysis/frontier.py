"""Compute-optimal frontier: N_opt(C), D_opt(C), L(C), and for MoE the best configuration per budget.

For a law L(N, D, ...) and a compute model C = C(N, D), the frontier minimises L over N with D solved from C
(Hoffmann et al. 2022, Approach 3). For ``chinchilla`` with C = 6ND this has the closed form N_opt = G
(C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))
(:func:`chinchilla_closed_form`, used by the tests). Any law and compute model is handled numerically: a
log-spaced grid of N, then a parabola through the best grid point and its neighbours. Bootstrap samples give
percentile intervals of every frontier quantity.

Compute models (:func:`cost_per_token`): ``"6ND"`` (C = 6 N D); a number kappa (C = kappa N D, e.g.
:func:`fit_kappa` of the runs' ``flops``); a callable N -> training FLOPs per token (e.g. :func:`fit_cost`,
the runs' own accounting as a power of N); or the name of a preset whose paper gives a compute model
(``"hunyuan-large"``: its C = k N D + a D, from ``moelab.presets.paper_facts``), used to compare with that
paper's allocation law at the compute model it was fitted on. ``"hunyuan"`` is kept as a short name for it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from analysis.fitting import FitResult
from analysis.laws import Law
from moelab.errors import ConfigError, MoelabError, is_number
from moelab.presets import PaperFacts, paper_facts

COMPUTE_ALIASES = {"hunyuan": "hunyuan-large"}


def compute_facts(compute) -> PaperFacts | None:
    """The paper facts behind a named compute model (None for "6ND", numbers and callables)."""
    if isinstance(compute, str) and compute != "6ND":
        try:
            return paper_facts(COMPUTE_ALIASES.get(compute, compute))
        except ConfigError:
            raise MoelabError(
                f"unknown compute model {compute!r}; use 6ND, a number kappa (C = kappa N D), a callable "
                "N -> FLOPs per token, or a preset with paper facts (hunyuan-large)"
            ) from None
    return None


def cost_per_token(N, compute="6ND"):
    """Training FLOPs per token of a model with N activated parameters under ``compute``."""
    N = np.asarray(N, np.float64)
    if isinstance(compute, str) and compute == "6ND":
        return 6.0 * N
    if is_number(compute):
        return float(compute) * N
    if callable(compute):
        return np.asarray(compute(N), np.float64)
    facts = compute_facts(compute)
    if facts is None:
        raise MoelabError(f"unknown compute model {compute!r}")
    return facts.cost_per_token(N)


def tokens_for(C, N, compute="6ND"):
    """Tokens D spending compute C on a model of N activated parameters."""
    return np.asarray(C, np.float64) / cost_per_token(N, compute)


def compute_for(N, D, compute="6ND"):
    """Compute C of N activated parameters trained on D tokens."""
    return np.asarray(D, np.float64) * cost_per_token(N, compute)


def fit_kappa(df: pd.DataFrame) -> float:
    """Median of flops / (N D) over the runs: the constant of a C = kappa N D compute model."""
    k = df["flops"].to_numpy(np.float64) / (
        df["active_params"].to_numpy(np.float64) * df["tokens"].to_numpy(np.float64)
    )
    k = k[np.isfinite(k)]
    if not k.size:
        raise MoelabError("no run has finite flops, active_params and tokens to fit a compute model")
    return float(np.median(k))


def fit_cost(df: pd.DataFrame) -> Callable[[np.ndarray], np.ndarray]:
    """The runs' own training FLOPs per token as a power of N (least squares of log(flops/tokens) on log N),
    so a frontier drawn over the runs lives on the same compute axis as the points (the accounting's
    attention and output-layer terms make the cost per token grow slower than N at small sizes). One size
    only: C = kappa N D with kappa from :func:`fit_kappa`."""
    n = df["active_params"].to_numpy(np.float64)
    fpt = df["flops"].to_numpy(np.float64) / df["tokens"].to_numpy(np.float64)
    ok = np.isfinite(n) & np.isfinite(fpt) & (n > 0) & (fpt > 0)
    n, fpt = n[ok], fpt[ok]
    if not n.size:
        raise MoelabError("no run has finite flops, active_params and tokens to fit a compute model")
    if np.ptp(np.log(n)) < 1e-6:
        k = float(np.median(fpt / n))
        return lambda x: k * np.asarray(x, np.float64)
    slope, icpt = np.polyfit(np.log(n), np.log(fpt), 1)
    return lambda x: np.exp(icpt) * np.asarray(x, np.float64) ** slope


def chinchilla_closed_form(p: dict, C) -> tuple[np.ndarray, np.ndarray]:
    """Hoffmann et al. 2022 (Approach 3, C = 6ND): (N_opt, D_opt) for parameters E, A, B, alpha, beta."""
    a, b = p["alpha"], p["beta"]
    G = (a * p["A"] / (b * p["B"])) ** (1 / (a + b))
    C6 = np.asarray(C, np.float64) / 6.0
    return G * C6 ** (b / (a + b)), C6 ** (a / (a + b)) / G


def _features(law: Law, N, D, config: dict) -> np.ndarray:
    cols = {"active_params": np.ravel(N), "tokens": np.ravel(D)}
    for c in law.columns:
        if c not in cols:
            if c not in config:
                raise MoelabError(f"law {law.name} needs {c} for the frontier; pass it in config")
            cols[c] = np.full(cols["active_params"].shape, float(config[c]))
    return law.features(pd.DataFrame(cols))


def optimal_allocation(
    law: Law, params: np.ndarray, C, *, compute="6ND", config: dict | None = None, n_grid: int = 1201
) -> dict[str, np.ndarray]:
    """N_opt, D_opt, L_opt [S, len(C)] for reported parameter vectors ``params`` [S, P] and budgets C."""
    if "tokens" not in law.columns:
        raise MoelabError(f"law {law.name} has no tokens term; a compute-optimal frontier needs L(N, D)")
    config = config or {}
    params = np.atleast_2d(np.asarray(params, np.float64))
    theta = law.from_params(params)
    C = np.atleast_1d(np.asarray(C, np.float64))
    # N from C^0.5 / 1e4 to C^0.5 * 1e4 covers every published frontier (exponents 0.4-0.6 at 1e18-1e26)
    u = np.linspace(-4 * np.log(10), 4 * np.log(10), n_grid)
    logN = 0.5 * np.log(C)[:, None] + u[None, :]  # [nC, G]
    N = np.exp(logN)
    D = tokens_for(C[:, None], N, compute)
    X = _features(law, N, D, config)  # [nC*G, k]
    logL = law.log_predict(theta, X, np).reshape(len(params), len(C), n_grid)  # [S, nC, G]
    i = np.clip(np.argmin(logL, axis=-1), 1, n_grid - 2)
    take = np.take_along_axis
    y0, y1, y2 = (take(logL, (i + o)[..., None], -1)[..., 0] for o in (-1, 0, 1))
    den = y0 - 2 * y1 + y2
    shift = np.where(den > 0, 0.5 * (y0 - y2) / np.where(den > 0, den, 1.0), 0.0)
    h = u[1] - u[0]
    logN_opt = take(np.broadcast_to(logN, logL.shape), i[..., None], -1)[..., 0] + np.clip(shift, -1, 1) * h
    N_opt = np.exp(logN_opt)
    D_opt = tokens_for(C[None, :], N_opt, compute)
    L_opt = np.exp(_predict_pairs(law, theta, N_opt, D_opt, config))
    on_edge = (i <= 1) | (i >= n_grid - 2)
    return {"C": C, "N_opt": N_opt, "D_opt": D_opt, "L_opt": L_opt, "on_edge": on_edge}


def _predict_pairs(law: Law, theta: np.ndarray, N: np.ndarray, D: np.ndarray, config: dict) -> np.ndarray:
    """log L for each sample s at its own (N[s, c], D[s, c])."""
    S, nC = N.shape
    out = np.empty((S, nC))
    for s in range(S):
        X = _features(law, N[s], D[s], config)
        out[s] = law.log_predict(theta[s], X, np)
    return out


def frontier(
    res: FitResult, C, *, compute="6ND", config: dict | None = None, confidence: float | None = None
) -> pd.DataFrame:
    """The compute-optimal frontier of a fitted law, with bootstrap percentile intervals when available.

    Columns: C, N_opt, D_opt, L_opt and, with a bootstrap, N_opt_lo/hi, D_opt_lo/hi, L_opt_lo/hi.
    """
    law = res.law
    point = optimal_allocation(
        law, np.array([[res.params[p] for p in law.params]]), C, compute=compute, config=config
    )
    out = pd.DataFrame({k: point[k][0] if k != "C" else point[k] for k in ("C", "N_opt", "D_opt", "L_opt")})
    if point["on_edge"].any():
        out["on_edge"] = point["on_edge"][0]
    if res.bootstrap is not None:
        b = res.bootstrap
        q = 100 * (1 - (confidence or b.confidence)) / 2
        samp = optimal_allocation(law, b.samples, C, compute=compute, config=config)
        for k in ("N_opt", "D_opt", "L_opt"):
            lo, hi = np.nanpercentile(samp[k], [q, 100 - q], axis=0)
            out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out


def best_moe_config(
    res: FitResult, C, candidates: list[dict], *, compute="6ND", dense: dict | None = None
) -> pd.DataFrame:
    """Per budget C: the candidate MoE configuration (dicts of n_experts, shared_ratio, granularity) with the
    lowest compute-optimal loss, its N_opt/D_opt/L_opt, and its efficiency leverage EL = C_dense / C at equal
    loss (Tian et al. 2025), C_dense found on the dense frontier (n_experts = 1) of the same law."""
    law = res.law
    p = np.array([[res.params[k] for k in law.params]])
    C = np.atleast_1d(np.asarray(C, np.float64))
    best = None
    for cand in candidates:
        fr = optimal_allocation(law, p, C, compute=compute, config=cand)
        L = fr["L_opt"][0]
        if best is None:
            best = {"L": L, "i": np.zeros(len(C), int), "fr": [fr]}
        else:
            better = best["L"] > L
            best["L"] = np.where(better, L, best["L"])
            best["i"] = np.where(better, len(best["fr"]), best["i"])
            best["fr"].append(fr)
    rows = []
    dense_cfg = {"n_experts": 1, "shared_ratio": 0.0, "granularity": 1.0, **(dense or {})}
    # dense frontier on a wide grid of budgets, for the equal-loss compute
    Cd = np.logspace(np.log10(C.min()) - 3, np.log10(C.max()) + 3, 400)
    Ld = optimal_allocation(law, p, Cd, compute=compute, config=dense_cfg)["L_opt"][0]
    order = np.argsort(Ld)
    for j, c in enumerate(C):
        k = int(best["i"][j])
        fr = best["fr"][k]
        L = float(fr["L_opt"][0, j])
        ok = Ld.min() <= L <= Ld.max()
        c_dense = float(np.exp(np.interp(L, Ld[order], np.log(Cd)[order]))) if ok else np.nan
        rows.append(
            {
                "C": c,
                **{f"best_{kk}": v for kk, v in candidates[k].items()},
                "N_opt": float(fr["N_opt"][0, j]),
                "D_opt": float(fr["D_opt"][0, j]),
                "L_opt": L,
                "C_dense_equal_loss": c_dense,
                "efficiency_leverage": c_dense / c,
            }
        )
    return pd.DataFrame(rows)
