"""Hyper-parameter laws: the critical batch size B_crit(L), C_min, the loss optimum of each LR x batch cell,
and power laws of the optima with bootstrap intervals, beside the published ones.

- **Critical batch** (Kaplan et al. 2020, sec. 5.1): B_crit(L) = B* / L^(1/alpha_B), fitted by least squares
  of log B_simple on log L over the logged points of every run (the gradient noise scale B_simple of
  ``moelab.train.noise`` estimates B_crit; McCandlish et al. 2018). Intervals: bootstrap over runs (all of a
  run's points resampled together, since they share one run's noise).
- **C_min** = C / (1 + B/B_crit(L)) per run (Kaplan et al. 2020 eq. 5.5; Hunyuan-Large fits its allocation
  law on it): the compute the same loss would need at a batch far below the critical one.
- **Cell optima**: runs of one cell (same experts E, activated size N, tokens D) at several peak learning
  rates and batch sizes; a quadratic in (log lr, log B) is fitted to the held-out loss and its minimum is the
  cell's (eta_opt, B_opt) (with one batch size: a parabola in log lr). Intervals: residual bootstrap (the
  design is fixed; the residuals are resampled and refitted).
- **Power laws** through the cell optima: eta_opt(C) = k C^a, B_opt(C) = k C^a (DeepSeek LLM 2024's form),
  and eta_opt(N, E) = k N^a E^b (Ludziejewski et al. 2025's form); every bootstrap replicate of the cell
  optima gives one replicate of each law, so the laws' intervals carry the optima's uncertainty.
- ``recommend`` carries the laws to a target (``moelab plan --preset hunyuan-large``), with the expert
  learning rate scale of Hunyuan-Large's rule from the measured expert/shared noise-scale ratio.

Batch sizes are in tokens throughout (batch_size x seq_len), C in training FLOPs (``moelab.accounting``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import compute_of
from moelab.accounting import param_counts, train_flops_per_token
from moelab.errors import MoelabError
from moelab.presets import published_train_tokens
from moelab.results import load as load_results
from moelab.train.metrics import read_metrics
from moelab.train.noise import auto_expert_lr_scale
from moelab.train.optim import expert_lr_ratio

#: Published hyper-parameter laws (one home for their constants).
PUBLISHED = {
    # DeepSeek LLM 2024 (arXiv 2401.02954) sec. 3.1: C in FLOPs (non-embedding FLOPs/token x tokens), B in
    # tokens.
    "deepseek_lr": {"k": 0.3118, "a": -0.1250, "source": "DeepSeek LLM 2024: eta_opt = 0.3118 C^-0.1250"},
    "deepseek_batch": {"k": 0.2920, "a": 0.3271, "source": "DeepSeek LLM 2024: B_opt = 0.2920 C^0.3271"},
    # Ludziejewski et al. 2025, "Joint MoE Scaling Laws": N_act with embeddings, E routed experts.
    "ludziejewski_lr": {
        "c": 8.39,
        "a": -0.81,
        "b": -0.25,
        "source": "Ludziejewski et al. 2025: LR = exp(8.39 - 0.81 ln N_act - 0.25 ln E)",
    },
    # Kaplan et al. 2020 sec. 5.1: B_crit(L) = B*/L^(1/alpha_B), L in nats of their BPE tokens, B in tokens.
    "kaplan_bcrit": {
        "B_star": 2.0e8,
        "alpha_B": 0.21,
        "source": "Kaplan et al. 2020: B* 2e8 tokens, alpha_B 0.21",
    },
}

NOISE_COLS = ("b_simple", "b_simple_expert", "b_simple_shared")
CELL_COLS = ("n_experts", "active_params", "tokens")


def deepseek_lr(C):
    p = PUBLISHED["deepseek_lr"]
    return p["k"] * np.asarray(C, np.float64) ** p["a"]


def deepseek_batch(C):
    p = PUBLISHED["deepseek_batch"]
    return p["k"] * np.asarray(C, np.float64) ** p["a"]


def ludziejewski_lr(N, E):
    p = PUBLISHED["ludziejewski_lr"]
    return np.exp(
        p["c"] + p["a"] * np.log(np.asarray(N, np.float64)) + p["b"] * np.log(np.asarray(E, np.float64))
    )


# ------------------------------------------------------------------------------------------ power laws
@dataclass
class PowerLaw:
    """y = k * prod_j x_j^(a_j), fitted by least squares in logs; ``samples`` are bootstrap replicates of the
    raw coefficients (log k, a_1, ...)."""

    name: str
    xnames: tuple[str, ...]
    coef: np.ndarray  # log k, exponents
    samples: np.ndarray | None = None  # [B, 1 + len(xnames)]
    n_points: int = 0
    confidence: float = 0.95
    x_range: tuple[tuple[float, float], ...] = ()
    warnings: list[str] = field(default_factory=list)

    @property
    def exp_names(self) -> tuple[str, ...]:
        return ("a",) if len(self.xnames) == 1 else tuple(f"a_{x}" for x in self.xnames)

    @property
    def params(self) -> dict[str, float]:
        return {
            "k": float(np.exp(self.coef[0])),
            **dict(zip(self.exp_names, map(float, self.coef[1:]), strict=True)),
        }

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        if self.samples is None:
            return {}
        ok = self.samples[np.all(np.isfinite(self.samples), axis=1)]
        if len(ok) < 2:
            return {}
        q = 100 * (1 - self.confidence) / 2
        lo, hi = np.percentile(ok, [q, 100 - q], axis=0)
        out = {"k": (float(np.exp(lo[0])), float(np.exp(hi[0])))}
        out.update({n: (float(a), float(b)) for n, a, b in zip(self.exp_names, lo[1:], hi[1:], strict=True)})
        return out

    @property
    def formula(self) -> str:
        p = self.params
        terms = " ".join(f"{x}^{p[n]:.3g}" for x, n in zip(self.xnames, self.exp_names, strict=True))
        return f"{self.name} = {p['k']:.4g} {terms}"

    def predict(self, *xs) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(point, lo, hi) at ``xs`` (one array per x name); lo/hi None without bootstrap samples."""
        logx = np.stack([np.log(np.asarray(x, np.float64)) for x in xs], axis=-1)
        point = np.exp(self.coef[0] + logx @ self.coef[1:])
        if self.samples is None:
            return point, None, None
        ok = self.samples[np.all(np.isfinite(self.samples), axis=1)]
        if len(ok) < 2:
            return point, None, None
        with np.errstate(over="ignore"):  # a replicate far off at a far target is inf, a valid percentile end
            reps = np.exp(ok[:, :1] + np.tensordot(ok[:, 1:], logx, axes=([1], [-1])).reshape(len(ok), -1))
        q = 100 * (1 - self.confidence) / 2
        lo, hi = np.percentile(reps, [q, 100 - q], axis=0)
        return point, lo.reshape(point.shape), hi.reshape(point.shape)

    def decades_beyond(self, *xs) -> float:
        """How many decades the farthest of ``xs`` lies outside the fitted range (0 inside)."""
        worst = 0.0
        for x, (lo, hi) in zip(xs, self.x_range, strict=True):
            lx = math.log10(float(x))
            worst = max(worst, math.log10(lo) - lx, lx - math.log10(hi))
        return worst

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "formula": self.formula,
            "params": self.params,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "n_points": self.n_points,
            "x_range": [list(r) for r in self.x_range],
            "n_boot": 0 if self.samples is None else int(np.all(np.isfinite(self.samples), axis=1).sum()),
            "warnings": self.warnings,
        }


def _loglinear(logy: np.ndarray, logX: np.ndarray) -> np.ndarray:
    A = np.column_stack([np.ones(len(logy)), logX])
    return np.linalg.lstsq(A, logy, rcond=None)[0]


def fit_power_law(
    name: str,
    y,
    xs: dict[str, np.ndarray],
    *,
    y_samples: np.ndarray | None = None,
    resamples: list[np.ndarray] | None = None,
    confidence: float = 0.95,
) -> PowerLaw:
    """Least squares of log y on log x_j. Bootstrap either from replicates of y (``y_samples`` [B, n], NaN
    where a replicate has no value) or from index resamples of the points (``resamples``)."""
    y = np.asarray(y, np.float64)
    X = np.column_stack([np.asarray(v, np.float64) for v in xs.values()])
    p = 1 + X.shape[1]
    if len(y) < p + 1:
        raise MoelabError(f"{name}: needs at least {p + 1} points for {p} coefficients, got {len(y)}")
    if np.any(y <= 0) or np.any(X <= 0):
        raise MoelabError(f"{name}: a power law needs positive values")
    logX, logy = np.log(X), np.log(y)
    samples = None
    if y_samples is not None:
        samples = np.full((len(y_samples), p), np.nan)
        for b, yb in enumerate(np.asarray(y_samples, np.float64)):
            ok = np.isfinite(yb) & (yb > 0)
            if ok.sum() >= p + 1:
                samples[b] = _loglinear(np.log(yb[ok]), logX[ok])
    elif resamples is not None:
        samples = np.array([_loglinear(logy[idx], logX[idx]) for idx in resamples]).reshape(-1, p)
    law = PowerLaw(
        name=name,
        xnames=tuple(xs),
        coef=_loglinear(logy, logX),
        samples=samples,
        n_points=len(y),
        confidence=confidence,
        x_range=tuple((float(c.min()), float(c.max())) for c in X.T),
    )
    return law


# ------------------------------------------------------------------------------------------ noise scale
def noise_points(curves: dict[str, pd.DataFrame], skip_frac: float = 0.2) -> pd.DataFrame:
    """Logged (train loss, B_simple) points of every run: run_id, step, loss and the ``NOISE_COLS`` present,
    without each run's first ``skip_frac`` of steps (warmup, and an EMA of only a few probes)."""
    frames = []
    for rid, c in curves.items():
        if "b_simple" not in c or "loss" not in c or c.empty:
            continue
        c = c[c["loss"].notna()]
        if c.empty:
            continue
        last = float(c["step"].max())
        keep = c[c["step"] > skip_frac * last]
        cols = ["step", "loss", *[k for k in NOISE_COLS if k in keep]]
        frames.append(keep[cols].assign(run_id=rid))
    if not frames:
        return pd.DataFrame(columns=["run_id", "step", "loss", *NOISE_COLS])
    return pd.concat(frames, ignore_index=True)


def fit_bcrit(
    points: pd.DataFrame, *, col: str = "b_simple", n_boot: int = 200, seed: int = 0, confidence: float = 0.95
) -> PowerLaw:
    """B_crit(L) = B*/L^(1/alpha_B) through the ``col`` noise scale of ``noise_points``; the law's
    ``params`` hold k = B* and a = -1/alpha_B (``bcrit_params`` gives B* and alpha_B)."""
    pts = points[np.isfinite(points[col].astype(float)) & (points[col].astype(float) > 0)]
    runs = pts["run_id"].to_numpy()
    ids = np.unique(runs)
    if len(ids) < 2:
        raise MoelabError(f"B_crit(L) needs the noise scale of >= 2 runs, got {len(ids)}")
    rng = np.random.default_rng(seed)
    rows = {r: np.flatnonzero(runs == r) for r in ids}
    resamples = [np.concatenate([rows[r] for r in rng.choice(ids, len(ids))]) for _ in range(n_boot)]
    law = fit_power_law(
        f"B_crit({col})",
        pts[col].astype(float).to_numpy(),
        {"L": pts["loss"].astype(float).to_numpy()},
        resamples=resamples,
        confidence=confidence,
    )
    law.n_points = len(pts)
    if law.coef[1] >= 0:
        law.warnings.append("B_simple does not grow as the loss falls across these runs (exponent >= 0)")
    return law


def bcrit_params(law: PowerLaw) -> dict[str, float | tuple[float, float] | None]:
    """B*, alpha_B = -1/a and alpha_B's interval of a ``fit_bcrit`` law."""
    a = law.params["a"]
    iv = law.intervals.get("a")
    alpha_iv = None
    if iv is not None and iv[1] < 0:
        alpha_iv = (-1 / iv[0], -1 / iv[1])
    return {"B_star": law.params["k"], "alpha_B": (-1 / a) if a < 0 else None, "alpha_B_interval": alpha_iv}


def c_min(df: pd.DataFrame, bcrit: PowerLaw, loss_col: str = "train_loss") -> np.ndarray:
    """C / (1 + B/B_crit(L)) per run, B = batch_size x seq_len tokens, L the run's final ``loss_col``."""
    B = df["batch_size"].to_numpy(np.float64) * df["seq_len"].to_numpy(np.float64)
    crit, _, _ = bcrit.predict(df[loss_col].to_numpy(np.float64))
    return compute_of(df) / (1.0 + B / crit)


def noise_ratio(runs: pd.DataFrame, confidence: float = 0.95) -> dict | None:
    """Expert / shared noise-scale ratio over the MoE runs' final values: median, percentile spread across
    runs and E/top_k (the ratio Hunyuan-Large's rule assumes: each expert sees top_k/E of the tokens)."""
    if not {"b_simple_expert", "b_simple_shared"} <= set(runs.columns):
        return None
    df = runs[(runs.get("n_experts", 1) > 1)]
    r = (df["b_simple_expert"].astype(float) / df["b_simple_shared"].astype(float)).to_numpy()
    ok = np.isfinite(r) & (r > 0)
    if not ok.any():
        return None
    q = 100 * (1 - confidence) / 2
    e_over_k = (df["n_experts"] / df.get("top_k", 1)).to_numpy(np.float64)[ok]
    return {
        "median": float(np.median(r[ok])),
        "interval": [float(np.percentile(r[ok], q)), float(np.percentile(r[ok], 100 - q))],
        "n_runs": int(ok.sum()),
        "e_over_k": sorted({float(x) for x in e_over_k}),
    }


# ------------------------------------------------------------------------------------------ LR x batch cells
@dataclass
class CellOptima:
    """Per cell: the loss optimum over (lr, batch) and its bootstrap replicates."""

    table: pd.DataFrame  # CELL_COLS, flops, n_runs, eta_opt, B_opt, loss_opt, kind, inside_lr, inside_B
    samples: np.ndarray  # [n_boot, n_cells, 2]: log eta_opt, log B_opt (NaN where a replicate has no valley)
    grids: dict = field(default_factory=dict)  # cell index -> (log lr, log B, loss) points fitted


def _near_optimum(x, y, loss, two_d: bool, rtol: float) -> np.ndarray | None:
    """Mask of the runs within ``rtol`` of the best loss, widened until the quadratic is determined."""
    best, p = loss.min(), 6 if two_d else 3

    def determined(m, n):
        if len(np.unique(x[m])) < 3 or m.sum() < n:
            return False
        return not two_d or (len(np.unique(y[m])) >= 3 and len(set(zip(x[m], y[m], strict=True))) >= 6)

    while True:
        m = loss <= best * (1 + rtol)
        if determined(m, p + 1):  # at least one residual degree of freedom for the bootstrap
            return m
        if m.all():
            return m if determined(m, p) else None
        rtol *= 2


def _fit_cell(x, y, loss, two_d: bool, near_rtol: float, n_boot: int, rng) -> dict | None:
    """The quadratic's minimum (log lr, log B) on the near-optimal runs with its residual-bootstrap
    replicates; None when no near set determines the fit."""
    near = _near_optimum(x, y, loss, two_d, near_rtol)
    if near is None:
        return None
    x, y, loss = x[near], y[near], loss[near]
    xm, ym = x.mean(), y.mean()  # centred for conditioning
    A = _design(x - xm, y - ym, two_d)
    c = np.linalg.lstsq(A, loss, rcond=None)[0]
    vx, vy = _vertex(c, two_d)
    fitted = A @ c
    # modified residuals (Davison & Hinkley 1997, alg. 6.3): leverage-corrected, centred
    lev = np.einsum("ij,ji->i", A, np.linalg.pinv(A))
    resid = (loss - fitted) / np.sqrt(np.clip(1 - lev, 1e-6, None))
    resid -= resid.mean()
    reps = np.full((n_boot, 2), np.nan)  # no residual left (as many runs as coefficients): no interval
    for b in range(n_boot if len(loss) > A.shape[1] else 0):
        bx, by = _vertex(np.linalg.lstsq(A, fitted + rng.choice(resid, len(resid)), rcond=None)[0], two_d)
        reps[b] = (bx + xm, (by + ym) if two_d else y[0])
    loss_opt = float("nan")
    if math.isfinite(vx):
        loss_opt = float((_design(np.array([vx]), np.array([vy if two_d else 0.0]), two_d) @ c)[0])
    log_B = (vy + ym) if two_d else float(y[0])
    return {
        "vx": vx + xm,
        "vy": log_B,
        "eta": math.exp(vx + xm) if math.isfinite(vx) else float("nan"),
        "B": math.exp(log_B) if math.isfinite(log_B) else float("nan"),
        "loss_opt": loss_opt,
        "inside_B": bool(two_d and math.isfinite(vy) and y.min() <= vy + ym <= y.max()),
        "reps": reps,
        "n_fit": int(len(loss)),
    }


def _cluster(values: np.ndarray, rtol: float = 0.05) -> np.ndarray:
    """A label per value: sorted values within ``rtol`` of their cluster's smallest share its label."""
    order = np.argsort(values, kind="stable")
    labels = np.empty(len(values), np.int64)
    label, first = -1, None
    for i in order:
        if first is None or values[i] > first * (1 + rtol):
            label, first = label + 1, values[i]
        labels[i] = label
    return labels


def _design(x, y, two_d: bool):
    if two_d:
        return np.column_stack([np.ones_like(x), x, y, x * x, y * y, x * y])
    return np.column_stack([np.ones_like(x), x, x * x])


def _vertex(c, two_d: bool):
    if not two_d:
        return (-c[1] / (2 * c[2]), float("nan")) if c[2] > 0 else (float("nan"), float("nan"))
    H = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
    if np.linalg.eigvalsh(H).min() <= 0:
        return float("nan"), float("nan")  # no minimum: the surface is not a valley here
    v = -np.linalg.solve(H, c[1:3])
    return float(v[0]), float(v[1])


def cell_optima(
    df: pd.DataFrame,
    *,
    loss_col: str = "loss",
    cell_cols: tuple[str, ...] = CELL_COLS,
    n_boot: int = 200,
    seed: int = 0,
    near_rtol: float = 0.1,
) -> CellOptima:
    """The loss optimum over (log lr, log B) of every cell with >= 3 learning rates (and >= 3 batch sizes for
    a 2-D fit; a single batch size gives a parabola in log lr and B_opt = that batch).

    A quadratic describes the surface near its minimum, not where a rate diverges or a tiny batch starves,
    so each cell is fitted to its runs within ``near_rtol`` of its best loss (DeepSeek LLM 2024 fit their
    near-optimal region too), widened by factors of 2 until the fit is determined (>= 3 learning rates, and
    >= 3 batch sizes and 6 distinct points for the 2-D fit)."""
    need = {"lr", "batch_size", "seq_len", loss_col, *cell_cols}
    missing = sorted(need - set(df.columns))
    if missing:
        raise MoelabError(f"LR x batch cells need column(s) {', '.join(missing)}")
    df = df[np.isfinite(df[loss_col].astype(float))].copy()
    df["_B"] = df["batch_size"].astype(float) * df["seq_len"].astype(float)
    df["_C"] = compute_of(df)
    # A run's tokens are whole steps of its batch, so one cell's runs differ by up to a batch: group the
    # sweep's nominal values where recorded, else values within 5% of each other.
    keys = []
    for c in cell_cols:
        nominal = f"nominal_{c}"
        src = df[nominal] if nominal in df and df[nominal].notna().all() else df[c]
        df[f"_k_{c}"] = _cluster(src.astype(float).to_numpy())
        keys.append(f"_k_{c}")
    rng = np.random.default_rng(seed)
    rows, samples, grids = [], [], {}
    for _, g in df.groupby(keys, sort=True):
        x, y = np.log(g["lr"].astype(float).to_numpy()), np.log(g["_B"].to_numpy())
        loss = g[loss_col].astype(float).to_numpy()
        if len(np.unique(x)) < 3 or len(np.unique(y)) == 2:
            continue  # too few learning rates, or two batch sizes (a line in log B has no minimum)
        two_d = len(np.unique(y)) >= 3
        fit = _fit_cell(x, y, loss, two_d, near_rtol, n_boot, rng)
        kind = "lr x batch" if two_d else "lr only"
        if two_d and (fit is None or not fit["inside_B"]):
            # no valley in log B inside the sizes tried: the LR optimum at the best batch, B_opt at that edge
            at = y == y[np.argmin(loss)]
            one = _fit_cell(x[at], y[at], loss[at], False, near_rtol, n_boot, rng)
            if one is not None:
                fit, kind = one, "lr at the best batch (B optimum not inside)"
        if fit is None:
            continue
        rows.append(
            {
                **{c: float(np.median(g[c].astype(float))) for c in cell_cols},
                "flops": float(np.median(g["_C"])),
                "n_runs": len(g),
                "eta_opt": fit["eta"],
                "B_opt": fit["B"],
                "loss_opt": fit["loss_opt"],
                "kind": kind,
                "inside_lr": bool(math.isfinite(fit["vx"]) and x.min() <= fit["vx"] <= x.max()),
                "inside_B": bool(kind == "lr x batch" and y.min() <= fit["vy"] <= y.max()),
                "best_run_loss": float(loss.min()),
                "n_fit": fit["n_fit"],
            }
        )
        samples.append(fit["reps"])
        grids[len(rows) - 1] = (x, y, loss)
    table = pd.DataFrame(rows)
    arr = np.stack(samples, axis=1) if samples else np.zeros((n_boot, 0, 2))
    return CellOptima(table=table, samples=arr, grids=grids)


def fit_hyper_laws(opt: CellOptima, *, confidence: float = 0.95) -> tuple[dict[str, PowerLaw], list[str]]:
    """eta_opt(C), B_opt(C) and (with >= 2 expert counts and sizes) eta_opt(N, E) through the cells whose
    optimum lies inside the grid they tried; returns (laws, notes on what was left out and why)."""
    t, notes, laws = opt.table, [], {}
    if t.empty:
        return laws, ["no cell has >= 3 learning rates: no optimum to fit"]
    in_lr = t["inside_lr"].to_numpy(bool)
    in_B = t["inside_B"].to_numpy(bool)
    for i in np.flatnonzero(~in_lr):
        notes.append(f"cell {_cell_label(t.iloc[i])}: the LR optimum is outside the rates tried (left out)")
    for i in np.flatnonzero(in_lr & ~in_B & (t["kind"] != "lr only").to_numpy()):
        notes.append(
            f"cell {_cell_label(t.iloc[i])}: the batch optimum is outside the sizes tried (left out of B_opt)"
        )
    eta_s = np.exp(opt.samples[:, :, 0])
    B_s = np.exp(opt.samples[:, :, 1])

    def attempt(name, mask, y, ys, xs):
        try:
            laws[name] = fit_power_law(
                name,
                y[mask],
                {k: v[mask] for k, v in xs.items()},
                y_samples=ys[:, mask],
                confidence=confidence,
            )
        except MoelabError as exc:
            notes.append(str(exc))

    C = t["flops"].to_numpy(np.float64)
    attempt("eta_opt(C)", in_lr, t["eta_opt"].to_numpy(np.float64), eta_s, {"C": C})
    attempt("B_opt(C)", in_lr & in_B, t["B_opt"].to_numpy(np.float64), B_s, {"C": C})
    sub = t[in_lr]
    if sub["n_experts"].nunique() >= 2 and sub["active_params"].nunique() >= 2:
        attempt(
            "eta_opt(N, E)",
            in_lr,
            t["eta_opt"].to_numpy(np.float64),
            eta_s,
            {"N": t["active_params"].to_numpy(np.float64), "E": t["n_experts"].to_numpy(np.float64)},
        )
    return laws, notes


def _cell_label(row) -> str:
    return f"E={int(row['n_experts'])} N={row['active_params']:.3g} D={row['tokens']:.3g}"


# ------------------------------------------------------------------------------------------ recommendation
def recommend(
    laws: dict[str, PowerLaw],
    *,
    flops: float,
    active_params: float,
    active_params_with_embedding: float,
    n_experts: int,
    top_k: int,
    ratio: dict | None = None,
) -> dict:
    """Peak LR, batch (tokens) and expert LR scale for a target run from the fitted laws, with intervals,
    beside the published laws, and how far each law is carried beyond the compute it was fitted on."""
    out: dict = {"flops": flops, "rows": [], "warnings": []}

    def row(quantity, law_name, *xs):
        law = laws.get(law_name)
        if law is None:
            return None
        v, lo, hi = law.predict(*xs)
        dec = law.decades_beyond(*xs)
        out["rows"].append(
            {
                "quantity": quantity,
                "source": f"fitted {law.formula}",
                "value": float(v),
                "interval": None if lo is None else [float(lo), float(hi)],
                "decades_extrapolated": dec,
            }
        )
        if dec > 0.5:
            out["warnings"].append(
                f"{law_name} is carried {dec:.1f} decades beyond the range it was fitted on: an "
                "extrapolation, read the interval as a lower bound on the uncertainty"
            )
        return float(v)

    eta = row("peak learning rate", "eta_opt(C)", flops)
    row("peak learning rate", "eta_opt(N, E)", active_params, n_experts)
    B = row("batch (tokens)", "B_opt(C)", flops)
    if B is None:
        out["warnings"].append("no fitted B_opt(C): the batch printed is DeepSeek's published law only")
    published = [
        ("peak learning rate", PUBLISHED["deepseek_lr"]["source"], float(deepseek_lr(flops))),
        (
            "peak learning rate",
            PUBLISHED["ludziejewski_lr"]["source"],
            float(ludziejewski_lr(active_params_with_embedding, n_experts)),
        ),
        ("batch (tokens)", PUBLISHED["deepseek_batch"]["source"], float(deepseek_batch(flops))),
    ]
    for quantity, source, value in published:
        out["rows"].append(
            {"quantity": quantity, "source": f"published {source}", "value": value, "interval": None,
             "decades_extrapolated": None}
        )  # fmt: skip
    B_ref = B if B is not None else float(deepseek_batch(flops))
    out["eta"], out["batch_tokens"] = eta, B
    # Hunyuan-Large's rule: the shared parameters keep eps_opt(B), routed experts get eps_opt at the tokens
    # they see. At B = B_noise (the batch a compute-efficient run trains at; McCandlish et al. 2018):
    paper = expert_lr_ratio(B_ref, B_ref, n_experts, top_k)
    out["rows"].append(
        {
            "quantity": "expert LR scale",
            "source": "Hunyuan-Large rule eps_opt(B k/E)/eps_opt(B), B = B_noise, "
            f"E/k = {n_experts / top_k:g}",
            "value": paper,
            "interval": None,
            "decades_extrapolated": None,
        }
    )
    if ratio is not None and n_experts > 1:
        # the rule peaks at ratio 1 (equal noise scales): the range over the runs' ratios is taken on a grid
        lo, hi = ratio["interval"]
        span = [auto_expert_lr_scale(B_ref, B_ref, B_ref * r) for r in np.geomspace(lo, hi, 65)]
        scale = [auto_expert_lr_scale(B_ref, B_ref, B_ref * ratio["median"]), min(span), max(span)]
        out["rows"].append(
            {
                "quantity": "expert LR scale",
                "source": f"measured expert/shared noise ratio {ratio['median']:.3g} "
                f"(runs' spread {ratio['interval'][0]:.3g}..{ratio['interval'][1]:.3g}, "
                f"E/k {ratio['e_over_k']}), "
                "B = B_noise(shared)",
                "value": scale[0],
                "interval": sorted(scale[1:]),
                "decades_extrapolated": None,
            }
        )
        out["expert_lr_scale"] = scale[0]
    else:
        out["expert_lr_scale"] = paper
    return out


def format_recommendation(rec: dict, target: str) -> str:
    lines = [f"hyper-parameters for {target} (C = {rec['flops']:.3g} FLOPs) from analysis.hyper:"]
    for r in rec["rows"]:
        iv = "" if r["interval"] is None else f"  95% [{r['interval'][0]:.3g}, {r['interval'][1]:.3g}]"
        lines.append(f"  {r['quantity']:<20}{r['value']:>11.4g}{iv}   <- {r['source']}")
    lines += [f"warning: {w}" for w in rec["warnings"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ one sweep's analysis
#: Columns of a run kept in an export (``data/hyper/runs.csv``).
RUN_COLUMNS = (
    "run_id", "status", "n_experts", "top_k", "active_params", "active_params_with_embedding", "tokens",
    "flops", "lr", "batch_size", "seq_len", "expert_lr_scale", "loss", "train_loss", *NOISE_COLS,
    "noise_overhead",
)  # fmt: skip
RUNS_CSV, NOISE_CSV = "runs.csv", "noise.csv"


def default_data_dir() -> Path:
    """``data/hyper`` of the source tree: the committed rows of ``sweeps/hyper.yaml`` the plan fits."""
    return Path(__file__).resolve().parents[1] / "data" / "hyper"


@dataclass
class HyperAnalysis:
    runs: pd.DataFrame
    points: pd.DataFrame  # noise_points
    optima: CellOptima | None = None
    laws: dict[str, PowerLaw] = field(default_factory=dict)
    bcrit: dict[str, PowerLaw] = field(default_factory=dict)  # noise column -> B_crit(L) law
    ratio: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "cells": None if self.optima is None else self.optima.table.to_dict(orient="records"),
            "laws": {k: v.to_dict() for k, v in self.laws.items()},
            "bcrit": {k: {**v.to_dict(), **_bcrit_json(v)} for k, v in self.bcrit.items()},
            "noise_ratio": self.ratio,
            "published": PUBLISHED,
            "notes": self.notes,
        }


def _bcrit_json(law: PowerLaw) -> dict:
    p = bcrit_params(law)
    iv = p["alpha_B_interval"]
    return {
        "B_star": p["B_star"],
        "alpha_B": p["alpha_B"],
        "alpha_B_interval": None if iv is None else list(iv),
    }


def analyse_hyper(
    runs: pd.DataFrame, points: pd.DataFrame, *, n_boot: int = 200, seed: int = 0
) -> HyperAnalysis:
    """Everything ``analysis.hyper`` fits from one sweep: cell optima and their laws, B_crit(L) per noise
    column, C_min per run (column ``c_min``), the expert/shared noise ratio. What cannot be fitted is a
    note."""
    ok = runs[runs["status"] == "succeeded"] if "status" in runs else runs
    an = HyperAnalysis(runs=runs.copy(), points=points)
    try:
        an.optima = cell_optima(ok, n_boot=n_boot, seed=seed)
        an.laws, notes = fit_hyper_laws(an.optima)
        an.notes += notes
    except MoelabError as exc:
        an.notes.append(f"LR x batch optima: {exc}")
    for col in NOISE_COLS:
        if col in points and points[col].notna().any():
            try:
                an.bcrit[col] = fit_bcrit(points, col=col, n_boot=n_boot, seed=seed)
                an.notes += [f"B_crit({col}): {w}" for w in an.bcrit[col].warnings]
            except MoelabError as exc:
                an.notes.append(f"B_crit({col}): {exc}")
    if "b_simple" in an.bcrit and {"batch_size", "seq_len", "train_loss"} <= set(runs.columns):
        an.runs["c_min"] = c_min(an.runs, an.bcrit["b_simple"])
    an.ratio = noise_ratio(ok)
    return an


def load_hyper(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, noise points) from a results folder (runs.parquet and the run folders' metrics.jsonl) or from an
    export folder holding ``runs.csv`` and ``noise.csv`` (``export_hyper``)."""
    path = Path(path)
    if (path / RUNS_CSV).is_file():
        runs = pd.read_csv(path / RUNS_CSV)
        noise = path / NOISE_CSV
        return runs, pd.read_csv(noise) if noise.is_file() else noise_points({})
    if not (path / "runs.parquet").is_file():
        raise MoelabError(f"{path}: neither a results folder (runs.parquet) nor a hyper export ({RUNS_CSV})")
    runs = load_results(path)  # every run, running ones too (the analysis keeps the succeeded)
    curves = {}
    for _, row in runs.iterrows():
        rd = Path(str(row.get("run_dir") or ""))
        rd = rd if rd.is_dir() else path / "runs" / str(row["run_id"])
        rows = read_metrics(rd / "metrics.jsonl")
        if rows:
            curves[str(row["run_id"])] = pd.DataFrame(rows)
    return runs, noise_points(curves)


def export_hyper(results_dir: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the rows ``analyse_hyper`` needs (``runs.csv``, ``noise.csv``) from a results folder: small
    enough to commit, so a fresh clone's ``moelab plan`` fits the same laws. Rows already exported to
    ``out_dir`` whose runs are not in ``results_dir`` are kept (a sweep grown over several results folders
    keeps every finished run); a run in both takes the results folder's row."""
    runs, points = load_hyper(results_dir)
    out = Path(out_dir)
    if (out / RUNS_CSV).is_file():
        old_runs, old_points = load_hyper(out)
        keep = ~old_runs["run_id"].isin(runs["run_id"])
        runs = pd.concat([old_runs[keep], runs], ignore_index=True)
        if len(old_points):
            old_points = old_points[old_points["run_id"].isin(old_runs.loc[keep, "run_id"])]
            points = pd.concat([old_points, points], ignore_index=True) if len(points) else old_points
    out.mkdir(parents=True, exist_ok=True)
    cols = [c for c in RUN_COLUMNS if c in runs.columns]
    runs[cols].sort_values("run_id").to_csv(out / RUNS_CSV, index=False, float_format="%.6g")
    points.sort_values(["run_id", "step"]).to_csv(out / NOISE_CSV, index=False, float_format="%.6g")
    return out / RUNS_CSV, out / NOISE_CSV


def plan_hyper(cfg, name: str, *, seq: int, tokens: float | None = None, source=None, n_boot: int = 200):
    """(recommendation dict, text) for ``moelab plan``: the laws fitted on ``source`` (a results folder or an
    export; default ``default_data_dir()``) carried to ``cfg`` trained on ``tokens`` (default: the preset's
    published count) at sequence length ``seq``."""
    source = Path(source) if source is not None else default_data_dir()
    if tokens is None:
        tokens = published_train_tokens(cfg)
        if tokens is None:
            raise MoelabError(f"{name}: no published training tokens; pass --tokens")
    runs, points = load_hyper(source)
    an = analyse_hyper(runs, points, n_boot=n_boot)
    if not an.laws:
        raise MoelabError(f"{source}: no LR/batch law could be fitted ({'; '.join(an.notes) or 'no cells'})")
    counts = param_counts(cfg)
    flops = train_flops_per_token(cfg, seq) * float(tokens)
    rec = recommend(
        an.laws,
        flops=flops,
        active_params=counts.active,
        active_params_with_embedding=counts.active_with_embedding,
        n_experts=cfg.n_experts,
        top_k=cfg.top_k,
        ratio=an.ratio,
    )
    rec.update(target=name, tokens=float(tokens), seq_len=seq, source=str(source), notes=an.notes)
    if "B_opt(C)" not in an.laws and an.optima is not None and len(an.optima.table):
        t = an.optima.table
        edge = int((~t["inside_B"]).sum())
        rec["warnings"].append(
            f"in {edge} of {len(t)} cells the loss optimum in batch lay outside the sizes tried "
            f"({t['B_opt'].min():.3g}..{t['B_opt'].max():.3g} tokens at the edge)"
        )
    if rec["batch_tokens"] is not None:
        rec["batch_sequences"] = rec["batch_tokens"] / seq
    text = format_recommendation(rec, f"{name} ({float(tokens):.3g} tokens, seq {seq})")
    return rec, text + f"\n  fitted on {len(runs)} runs of {source}"


def main(argv: list[str] | None = None) -> int:
    """``python -m analysis.hyper export RESULTS_DIR OUT_DIR``: write ``export_hyper``'s rows."""
    import argparse  # the command-line boundary

    parser = argparse.ArgumentParser(prog="python -m analysis.hyper")
    sub = parser.add_subparsers(dest="cmd", required=True)
    exp = sub.add_parser("export", help="write runs.csv and noise.csv of a results folder (to commit)")
    exp.add_argument("results", type=Path)
    exp.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        for path in export_hyper(args.results, args.out):
            print(path)
    except MoelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
