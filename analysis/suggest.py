"""Which runs to train next: the candidates that most shrink the bootstrap interval of a target prediction per
FLOP (``moelab suggest``).

The lab's uncertainty about a target (the loss of ``hunyuan-large`` on its tokens, or the compute-optimal
loss at a budget) is the spread of the bootstrap ensemble (:mod:`analysis.bootstrap`): B refits theta_b of the
law to resamples of the runs. Each candidate run c (a family member and a token count, built and costed
exactly as a sweep would build it) has a prediction log L(c; theta_b) under every member. The ensemble's joint
covariance S of the target's log-loss t and the candidates' log-losses is the linearised parameter covariance
seen through the law (S[t, c] ~ g_t' Sigma g_c). Observing candidate c with the fit's residual noise sigma^2
(log loss) conditions the ensemble as one Kalman / Gaussian update (Evensen 2003, ensemble Kalman filter):

    var(t | y_c) = S[t, t] - S[t, c]^2 / (sigma^2 + S[c, c]),   S <- S - S[:, c] S[c, :] / (sigma^2 + S[c, c])

which is the c-optimal design criterion of optimal experimental design (Atkinson, Donev & Tobias 2007, ch. 10;
Chaloner & Verdinelli 1995 for its Bayesian form) evaluated from the ensemble instead of an analytic Jacobian,
and equals refitting with a pseudo-observation at the ensemble mean to first order. Runs are chosen greedily:
at each step the candidate with the largest variance reduction per FLOP that still fits the budget; with a
budget, the greedy by reduction alone is run too (cost-benefit greedy, Leskovec et al. 2007, CELF); each
greedy set is then improved by Fedorov's exchange (single adds, drops and swaps within the same FLOPs while
the variance falls), and the lowest variance of the four end points is kept.
Candidates over the per-run FLOP cap, over one epoch of the corpus, outside the family's
valid shapes (``ModelConfig.from_budget`` refuses them) or identical to a run already in the table are
excluded before any scoring.

:func:`simulate` checks the method where the truth is known: runs drawn from a law with noise, the K suggested
runs against the same FLOPs spent on random candidates and on the next rung of the regular grid, each judged
by the width of the target's 95% bootstrap interval after refitting with the new runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.bootstrap import refit_many, resample_weights
from analysis.extrapolate import preset_features
from analysis.fitting import DELTA, FitResult
from analysis.frontier import optimal_allocation
from analysis.laws import Law, get_law
from analysis.validate import compute_of
from moelab.accounting import param_counts, train_flops_per_token
from moelab.errors import ConfigError, MoelabError
from moelab.presets import paper_facts
from moelab.sweep.spec import SweepSpec, build_run
from moelab.train.config import TrainConfig

#: Axes a candidate may vary (the budget axes of a sweep plus its length).
AXES = ("active_params", "n_experts", "top_k", "shared_ratio", "granularity", "tokens")
#: Geometric step of the default active_params and tokens grids (four values a decade).
STEP = 10**0.25


# ---------------------------------------------------------------------------------------------- target
@dataclass(frozen=True)
class Target:
    """What the next runs should pin down: the loss of a preset on ``tokens`` (``flops`` None), or the
    compute-optimal loss at ``flops`` for the preset's expert configuration (``compute``: frontier model).
    ``model`` replaces the preset by explicit features (active_params, n_experts, ...; e.g. Chinchilla's
    70B for its own data)."""

    preset: str = "hunyuan-large"
    tokens: float | None = paper_facts("hunyuan-large").train_tokens
    flops: float | None = None
    compute: Any = "6ND"
    model: dict | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.flops is None):
            raise MoelabError("a target needs exactly one of tokens (a preset's run) or flops (a budget)")
        for name in ("tokens", "flops"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise MoelabError(f"target {name} must be a number > 0, got {v!r}")

    @property
    def label(self) -> str:
        name = self.preset if self.model is None else "N = {:.3g}".format(self.model["active_params"])
        if self.flops is None:
            return f"{name} on {self.tokens:.3g} tokens"
        return f"optimal loss at C = {self.flops:.3g} FLOPs ({name}'s experts, C = {self.compute})"

    def check(self, law: Law) -> dict:
        """The preset's features, after checking that ``law`` can predict this target (one-line errors)."""
        feats = preset_features(self.preset) if self.model is None else dict(self.model)
        missing = [c for c in law.columns if c not in feats and c != "tokens"]
        if missing:
            raise MoelabError(f"law {law.name} needs {', '.join(missing)}, which preset {self.preset} lacks")
        if self.flops is not None and "tokens" not in law.columns:
            raise MoelabError(f"law {law.name} has no tokens term; a --flops target needs L(N, D)")
        return feats

    def log_values(self, law: Law, theta: np.ndarray) -> np.ndarray:
        """log L at the target under each raw parameter vector of ``theta`` [B, P] -> [B]."""
        feats = self.check(law)
        theta = np.atleast_2d(theta)
        if self.flops is None:
            row = pd.DataFrame({**{k: [v] for k, v in feats.items()}, "tokens": [float(self.tokens)]})
            return law.log_predict(theta, law.features(row), np)[:, 0]
        config = {k: v for k, v in feats.items() if k != "active_params"}
        out = optimal_allocation(law, law.to_params(theta), [self.flops], compute=self.compute, config=config)
        return np.log(out["L_opt"][:, 0])


# ---------------------------------------------------------------------------------------------- candidates
@dataclass
class Candidates:
    """Runs that may be suggested: the sweep axis values of each (``points``), the law's columns of the
    model a sweep would build from them (``table``) and its training FLOPs (``flops``)."""

    points: list[dict[str, Any]]
    table: pd.DataFrame  # active_params (realised), tokens, n_experts, shared_ratio, granularity, top_k
    flops: np.ndarray
    excluded: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.points)

    def subset(self, idx: Iterable[int]) -> Candidates:
        idx = list(idx)
        return Candidates(
            [self.points[i] for i in idx], self.table.iloc[idx].reset_index(drop=True), self.flops[idx]
        )


def grid_points(axes: dict[str, list]) -> list[dict[str, Any]]:
    """The cross product of ``axes`` (axis -> values), dense points normalised (shared_ratio 0, top_k 1)
    and duplicates dropped."""
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise MoelabError(f"unknown candidate axis {unknown[0]!r}; allowed: {', '.join(AXES)}")
    names = list(axes)
    out: dict[tuple, dict] = {}
    for combo in itertools.product(*(axes[a] for a in names)):
        p = dict(zip(names, combo, strict=True))
        if p.get("n_experts", 2) == 1:
            p.update({k: v for k, v in (("shared_ratio", 0.0), ("top_k", 1)) if k in p})
        out.setdefault(tuple(sorted(p.items())), p)
    return list(out.values())


def build_candidates(
    points: list[dict[str, Any]],
    base: dict[str, Any] | None = None,
    *,
    max_flops: float = math.inf,
    max_tokens: float = math.inf,
    existing: pd.DataFrame | None = None,
    columns: tuple[str, ...] = (),
) -> Candidates:
    """Build each point as ``moelab sweep`` would (``moelab.sweep.spec.build_run`` on the ``base`` sweep
    sections model/data/train) and keep those that are valid family shapes, within ``max_flops`` (training
    FLOPs of ``moelab.accounting``) and ``max_tokens`` (one epoch), and not already in ``existing`` (equal
    law ``columns``, 1e-6 relative). Token counts are rounded to whole steps of the base batch."""
    base = dict(base or {})
    spec = SweepSpec.from_dict(
        {"name": "suggest", **{k: base.get(k) or {} for k in ("model", "data", "train")}},
        source="base spec",
    )
    excluded = {"invalid shape": 0, "over the FLOP cap": 0, "over one epoch": 0, "already run": 0}
    keep_points, rows, flops = [], [], []
    seen: set[tuple] = set()
    step_tokens = _step_tokens(spec.train)
    for p in points:
        p = dict(p)
        if "tokens" in p:
            p["tokens"] = int(max(1, round(float(p["tokens"]) / step_tokens)) * step_tokens)
        try:
            run = build_run(spec, p)
        except ConfigError:
            excluded["invalid shape"] += 1
            continue
        cfg = run.model
        tokens = float(run.train.tokens)
        c = train_flops_per_token(cfg, run.train.seq_len) * tokens
        row = {
            "active_params": float(param_counts(cfg).active),
            "tokens": tokens,
            "n_experts": float(cfg.n_experts),
            "top_k": float(cfg.top_k),
            "shared_ratio": float(cfg.shared_ratio) if cfg.is_moe else np.nan,
            "granularity": float(cfg.granularity),
        }
        key = tuple(np.round(np.nan_to_num([row[k] for k in AXES]), 6))
        if key in seen:
            continue
        seen.add(key)
        if c > max_flops:
            excluded["over the FLOP cap"] += 1
            continue
        if tokens > max_tokens:
            excluded["over one epoch"] += 1
            continue
        if existing is not None and columns and _in_table(row, existing, columns):
            excluded["already run"] += 1
            continue
        keep_points.append(p)
        rows.append(row)
        flops.append(c)
    table = pd.DataFrame(rows, columns=["active_params", "tokens", "n_experts", "top_k", "shared_ratio",
                                        "granularity"])  # fmt: skip
    return Candidates(keep_points, table, np.asarray(flops, np.float64), excluded)


def _step_tokens(train: dict) -> int:
    defaults = TrainConfig()
    return int(train.get("batch_size", defaults.batch_size)) * int(train.get("seq_len", defaults.seq_len))


def _in_table(row: dict, df: pd.DataFrame, columns: tuple[str, ...]) -> bool:
    match = np.ones(len(df), bool)
    for c in columns:
        if c not in df.columns:
            return False
        v = df[c].to_numpy(np.float64)
        x = row[c]
        if c == "shared_ratio":
            v, x = np.nan_to_num(v), float(np.nan_to_num(x))
        match &= np.isclose(v, x, rtol=1e-6, atol=1e-9)
    return bool(match.any())


def default_axes(df: pd.DataFrame, law: Law, max_tokens: float = math.inf) -> dict[str, list]:
    """Candidate values per axis: for the law's own axes a range around the runs (active_params and tokens
    from the smallest run to 30x the largest, four values a decade; n_experts powers of two up to 4x the
    largest plus the runs' values; shared_ratio and granularity the runs' values and a few standard ones);
    every other axis at the runs' most common value."""

    def geometric(col: str, hi_mult: float, cap: float = math.inf) -> list[float]:
        v = df[col].to_numpy(np.float64)
        lo, hi = float(v.min()), min(float(v.max()) * hi_mult, cap)
        n = int(math.floor(math.log(hi / lo) / math.log(STEP) + 1e-9)) + 1
        return [float(f"{lo * STEP**i:.3g}") for i in range(max(n, 1))]

    def mode(col: str, default):
        if col not in df.columns:
            return default
        v = df[col].dropna()
        return default if v.empty else v.mode().iloc[0]

    axes: dict[str, list] = {"active_params": geometric("active_params", 30.0)}
    axes["tokens"] = geometric("tokens", 30.0, max_tokens)
    if "n_experts" in law.columns:
        top = int(df["n_experts"].max())
        pow2 = [2**i for i in range(int(math.log2(max(4 * top, 2))) + 1)]
        axes["n_experts"] = sorted({*pow2, *(int(e) for e in df["n_experts"].unique())})
    else:
        axes["n_experts"] = [int(mode("n_experts", 1))]
    if "shared_ratio" in law.columns:
        seen = {round(float(r), 2) for r in df["shared_ratio"].dropna().unique()}
        axes["shared_ratio"] = sorted(seen | {0.0, 0.25, 0.5, 0.75})
    elif axes["n_experts"] != [1]:
        axes["shared_ratio"] = [round(float(mode("shared_ratio", 0.0)), 2)]
    if "granularity" in law.columns:
        seen = {round(float(g), 2) for g in df["granularity"].dropna().unique()}
        axes["granularity"] = sorted(seen | {1.0, 2.0, 4.0, 8.0})
    else:
        axes["granularity"] = [round(float(mode("granularity", 1.0)), 2)]
    axes["top_k"] = [int(mode("top_k", 1))]
    return axes


# ---------------------------------------------------------------------------------------------- the design
@dataclass
class Design:
    """Chosen candidates (indices, in the order picked) and the target's log-loss variance after each pick."""

    chosen: list[int]
    variance: list[float]  # [len(chosen) + 1]: before any, then after each
    flops: float
    rule: str  # "per FLOP" | "reduction"


def noise_variance(res: FitResult) -> float:
    """Residual variance of log loss around the fit: sum r^2 / (n - P), floored at 1e-10."""
    r = res.law.log_predict(res.theta, res.data.X, np) - res.data.logy
    return max(float(np.sum(r**2) / max(len(r) - res.law.n_params, 1)), 1e-10)


# ---------------------------------------------------------------------------------------------- misfit
#: Share of the runs held out by each extrapolation fold of :func:`fit_discrepancy`.
HOLDOUT_FRACTION = 0.2
#: Scales of the fold fits' linearised prediction variance the likelihood is profiled over (a Huber fit's
#: parameter error exceeds the least-squares one; with the scale fixed at 1, 23% of 200 misfit-free synthetic
#: tables showed a discrepancy at the 5% level, with the profile 6.5%).
V_SCALES = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass(frozen=True)
class Discrepancy:
    """The law's misfit away from the runs it was fitted to (Kennedy & O'Hagan 2001's model discrepancy, here
    without correlation between runs): an error of variance ``kappa2 * d^2`` in log loss at a run whose
    nearest done run is ``d`` away in the law's features standardised by the done runs' spread (a smooth
    misfit that is zero on the data grows about linearly in d). ``kappa2`` is estimated from the done runs'
    own extrapolation folds (:func:`discrepancy_from_folds`); ``lr`` is its likelihood-ratio statistic
    against no discrepancy (about 2.7 at the 5% level)."""

    kappa2: float
    X_done: np.ndarray  # [n, k] features of the done runs
    scale: np.ndarray  # [k] their standard deviation (1 for constant features)
    n_folds: int = 0
    n_heldout: int = 0  # held-out (run, fold) residuals the estimate rests on
    lr: float = 0.0  # likelihood-ratio statistic of kappa2 against 0

    def distance(self, X: np.ndarray) -> np.ndarray:
        """Standardised distance [m] of each row of ``X`` to its nearest done run."""
        Z = np.asarray(X, np.float64) / self.scale
        Zd = self.X_done / self.scale
        return np.sqrt(((Z[:, None, :] - Zd[None, :, :]) ** 2).sum(-1).min(axis=1))

    def variance(self, X: np.ndarray) -> np.ndarray:
        return self.kappa2 * self.distance(X) ** 2


def _scale(X: np.ndarray) -> np.ndarray:
    s = np.std(X, axis=0)
    return np.where(s > 1e-12, s, 1.0)


def extrapolation_folds(X: np.ndarray, n_params: int, frac: float | None = None) -> np.ndarray:
    """Boolean training masks [F, n]: each fold holds out the ``frac`` of the runs furthest along one
    direction of the standardised features (each axis and each pair's sum and difference, both signs), so the
    held-out runs are extrapolations of the rest in every direction a candidate may lie; folds that would
    leave fewer than ``n_params + 2`` runs, or hold out none, are dropped, and duplicates merged."""
    frac = HOLDOUT_FRACTION if frac is None else frac
    Z = (X - X.mean(axis=0)) / _scale(X)
    k = Z.shape[1]
    dirs = [np.eye(k)[j] for j in range(k)]
    for a, b in itertools.combinations(range(k), 2):
        dirs += [(np.eye(k)[a] + np.eye(k)[b]) / math.sqrt(2), (np.eye(k)[a] - np.eye(k)[b]) / math.sqrt(2)]
    n = len(X)
    n_out = max(1, int(round(frac * n)))
    masks: dict[bytes, np.ndarray] = {}
    for u in dirs:
        if not np.ptp(Z @ u) > 1e-9:
            continue
        for sign in (1.0, -1.0):
            proj = sign * (Z @ u)
            train = np.ones(n, bool)
            train[np.argsort(-proj, kind="stable")[:n_out]] = False
            if train.sum() >= n_params + 2:
                masks.setdefault(train.tobytes(), train)
    return np.array(list(masks.values()), bool).reshape(-1, n)


def _jacobian(law: Law, theta: np.ndarray, X: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """d log L / d theta [n, P] by central differences on the raw coordinates."""
    P = len(theta)
    steps = h * np.maximum(1.0, np.abs(theta))
    plus = theta[None] + np.diag(steps)
    minus = theta[None] - np.diag(steps)
    f = law.log_predict(np.concatenate([plus, minus]), X, np)
    return ((f[:P] - f[P:]) / (2 * steps[:, None])).T


def discrepancy_from_folds(
    law: Law,
    X: np.ndarray,
    logy: np.ndarray,
    masks: np.ndarray,
    fold_thetas: np.ndarray,
    noise_var: float,
) -> Discrepancy:
    """The maximum-likelihood ``kappa2`` of :class:`Discrepancy` from the held-out residuals of fold fits:
    residual r_i of held-out run i under fold f's fit ~ N(0, s^2 + lambda v_i + kappa2 d_i^2), with s^2 the
    full fit's noise, v_i the fold fit's own (linearised, Gauss-Newton) prediction variance at the run, lambda
    profiled over :data:`V_SCALES`, and d_i its distance to the fold's training runs: the parameter error of
    an extrapolating fit, which the bootstrap ensemble already carries, is not counted as misfit. The
    residuals of one run in several folds are treated as independent, so ``lr`` is only a guide."""
    X = np.asarray(X, np.float64)
    scale = _scale(X)
    r_all, v_all, d_all = [], [], []
    for train, theta in zip(masks, fold_thetas, strict=True):
        if not np.all(np.isfinite(theta)):
            continue
        pred = law.log_predict(theta, X, np)
        r = pred - logy
        n_tr = int(train.sum())
        s2 = float(np.sum(r[train] ** 2) / max(n_tr - law.n_params, 1))
        J = _jacobian(law, theta, X)
        cov = s2 * np.linalg.pinv(J[train].T @ J[train])
        out = ~train
        v = np.einsum("ip,pq,iq->i", J[out], cov, J[out])
        Zo, Zt = X[out] / scale, X[train] / scale
        d = np.sqrt(((Zo[:, None, :] - Zt[None, :, :]) ** 2).sum(-1).min(axis=1))
        r_all.append(r[out])
        v_all.append(np.maximum(v, 0.0))
        d_all.append(d)
    if not r_all:
        return Discrepancy(0.0, X, scale)
    r, v, d = (np.concatenate(a) for a in (r_all, v_all, d_all))
    ok = np.isfinite(r) & np.isfinite(v)
    r, v, d = r[ok], v[ok], d[ok]
    grid = np.concatenate([[0.0], np.logspace(-10, 1, 221)])
    lam = np.asarray(V_SCALES)
    var = noise_var + lam[:, None, None] * v[None, None, :] + grid[None, :, None] * d[None, None, :] ** 2
    nll = np.sum(np.log(var) + r[None, None, :] ** 2 / var, axis=2)  # -2 log likelihood + const [L, G]
    nll = nll.min(axis=0)  # profiled over the scale of the parameter error
    best = int(np.argmin(nll))
    lr = float(nll[0] - nll[best])
    return Discrepancy(float(grid[best]), X, scale, len(masks), int(r.size), lr)


def fit_discrepancy(
    law: Law,
    datasets: list[tuple[np.ndarray, np.ndarray]],
    thetas: list[np.ndarray],
    noise_vars: list[float],
    delta: float = DELTA,
) -> list[Discrepancy]:
    """:func:`discrepancy_from_folds` for each (X, log loss) dataset with its full fit's raw ``thetas`` (the
    fold fits start there) and noise; every fold of every dataset runs as one lane of one batched L-BFGS."""
    masks = [extrapolation_folds(X, law.n_params) for X, _ in datasets]
    use = [i for i, m in enumerate(masks) if len(m)]
    fits = refit_many(
        law, delta, [datasets[i] for i in use], [masks[i].astype(np.float64) for i in use],
        [np.atleast_2d(thetas[i]) for i in use],
    ) if use else []  # fmt: skip
    fold_thetas = dict(zip(use, fits, strict=True))
    out = []
    for i, (X, y) in enumerate(datasets):
        if i in fold_thetas:
            out.append(discrepancy_from_folds(law, X, y, masks[i], fold_thetas[i], noise_vars[i]))
        else:
            out.append(Discrepancy(0.0, np.asarray(X, np.float64), _scale(np.asarray(X, np.float64))))
    return out


def greedy_design(
    cov: np.ndarray,
    cost: np.ndarray,
    noise_var: float,
    *,
    k: int,
    budget: float = math.inf,
    per_flop: bool = True,
    misfit_var: np.ndarray | None = None,
) -> Design:
    """Greedy Gaussian conditioning of the joint covariance ``cov`` [(1+M), (1+M)] (index 0 = target, then
    the M candidates) on up to ``k`` observations of noise ``noise_var`` costing ``cost`` [M] in total at most
    ``budget``; each step picks the largest variance reduction of the target per FLOP (``per_flop``) or in
    absolute terms.

    ``misfit_var`` [M] (the law's discrepancy at each candidate) makes the variance that of the unweighted
    refit, which gives a misfit run the same weight as any other: with S the covariance conditioned on the
    picks A at noise s^2, Var(t) = S_tt + sum over c in A of misfit_c (S_tc / s^2)^2 (the sandwich variance
    of least squares with heteroscedastic errors), so a pick can widen the interval."""
    S = np.array(cov, np.float64, copy=True)
    M = S.shape[0] - 1
    cost = np.asarray(cost, np.float64)
    tau2 = np.zeros(M) if misfit_var is None else np.asarray(misfit_var, np.float64)
    avail = np.ones(M, bool)
    chosen, var, spent = [], [float(S[0, 0])], 0.0
    for _ in range(int(k)):
        ok = avail & (spent + cost <= budget * (1 + 1e-9))
        if not ok.any():
            break
        diag = np.maximum(np.diag(S)[1:], 0.0)
        denom = noise_var + diag
        St = S[0, 1:]
        after = S[0, 0] - St**2 / denom + tau2 * (St / denom) ** 2
        if chosen:
            a = np.array(chosen)
            S_ta = S[0, a + 1][None, :] - St[:, None] * S[1:, a + 1] / denom[:, None]  # [M, |A|] after j
            after = after + np.sum(tau2[a] * (S_ta / noise_var) ** 2, axis=1)
        gain = var[-1] - after
        score = gain / cost if per_flop else gain
        j = int(np.argmax(np.where(ok, score, -np.inf)))
        if not gain[j] > 0:
            break
        col = S[:, j + 1].copy()
        S -= np.outer(col, col) / (noise_var + S[j + 1, j + 1])
        avail[j] = False
        chosen.append(j)
        spent += float(cost[j])
        var.append(float(max(after[j], 0.0)))
    return Design(chosen, var, spent, "per FLOP" if per_flop else "reduction")


def design_variance(cov: np.ndarray, sets: np.ndarray, noise_var: float, misfit_var=None) -> np.ndarray:
    """The target's variance (:func:`greedy_design`'s criterion) after observing each row of ``sets`` [Q, m]
    (candidate indices, all sets of one size m) -> [Q]. With gain weights K = (S_AA + s^2 I)^-1 S_At the
    conditioned variance is S_tt - S_tA K, and the misfit adds sum_A misfit (S_tA|A / s^2)^2, which is
    sum_A misfit K^2 (S_tA conditioned on A is s^2 K). Equal, set by set, to the greedy's running value."""
    S = np.asarray(cov, np.float64)
    sets = np.atleast_2d(np.asarray(sets, np.intp))
    if sets.shape[1] == 0:
        return np.full(len(sets), float(S[0, 0]))
    idx = sets + 1
    A = S[idx[:, :, None], idx[:, None, :]] + noise_var * np.eye(idx.shape[1])
    st = S[0, idx]
    K = np.linalg.solve(A, st[..., None])[..., 0]
    var = S[0, 0] - np.sum(st * K, axis=1)
    if misfit_var is not None:
        var = var + np.sum(np.asarray(misfit_var, np.float64)[sets] * K**2, axis=1)
    return var


def exchange_design(
    cov: np.ndarray,
    cost: np.ndarray,
    noise_var: float,
    start: Design,
    *,
    k: int,
    budget: float = math.inf,
    misfit_var: np.ndarray | None = None,
    max_moves: int = 100,
) -> Design:
    """Fedorov's exchange (Fedorov 1972; Atkinson, Donev & Tobias 2007, ch. 12) from the greedy ``start``:
    repeatedly make the single move (add a candidate, drop a chosen one, or swap one for another) that most
    lowers :func:`design_variance`, keeping at most ``k`` runs and at most ``min(budget, start.flops)`` FLOPs
    (the same FLOPs as the greedy, so an unbounded per-FLOP design stays as cheap), until no move helps. The
    greedy commits to its first picks; the exchange can undo them."""
    cost = np.asarray(cost, np.float64)
    M = len(cost)
    cap = min(budget, start.flops) * (1 + 1e-9)
    A = list(start.chosen)
    var = float(design_variance(cov, np.array([A], np.intp).reshape(1, -1), noise_var, misfit_var)[0])
    for _ in range(max_moves):
        spent = float(cost[A].sum())
        others = np.array([j for j in range(M) if j not in A], np.intp)
        moves: list[np.ndarray] = []
        if len(A) < k and len(others):
            ok = others[spent + cost[others] <= cap]
            moves.append(np.column_stack([np.tile(A, (len(ok), 1)), ok]).astype(np.intp))
        if len(A) > 1:
            moves.append(np.array([[a for a in A if a != drop] for drop in A], np.intp))
        for p, a in enumerate(A):
            ok = others[spent - cost[a] + cost[others] <= cap]
            if len(ok):
                rows = np.tile(A, (len(ok), 1))
                rows[:, p] = ok
                moves.append(rows.astype(np.intp))
        best, best_set = var, None
        for sets in moves:
            if len(sets) == 0:
                continue
            v = design_variance(cov, sets, noise_var, misfit_var)
            j = int(np.argmin(v))
            if v[j] < best * (1 - 1e-9):
                best, best_set = float(v[j]), [int(c) for c in sets[j]]
        if best_set is None:
            break
        A, var = best_set, best
    # report the final set in greedy order, with the variance after each pick (as the greedy does)
    order, variance, rest = [], [float(start.variance[0])], list(A)
    while rest:
        sets = np.array([[*order, c] for c in rest], np.intp)
        v = design_variance(cov, sets, noise_var, misfit_var)
        j = int(np.argmin(v))
        order.append(rest.pop(j))
        variance.append(float(max(v[j], 0.0)))
    return Design(order, variance, float(cost[A].sum()), "exchange")


def design_from_ensemble(
    t: np.ndarray,
    preds: np.ndarray,
    cost: np.ndarray,
    noise_var: float,
    *,
    k: int,
    budget: float = math.inf,
    misfit_var: np.ndarray | None = None,
) -> Design:
    """The design for target log-losses ``t`` [B] and candidate log-losses ``preds`` [B, M] of one bootstrap
    ensemble: the per-FLOP greedy and, with a finite budget, the greedy by reduction, each improved by
    :func:`exchange_design` (a local search, so two starts); the lowest variance of the four wins."""
    Z = np.concatenate([np.asarray(t)[:, None], np.asarray(preds)], axis=1)
    ok = np.all(np.isfinite(Z), axis=1)
    cov = np.cov(Z[ok], rowvar=False)
    found = [greedy_design(cov, cost, noise_var, k=k, budget=budget, per_flop=True, misfit_var=misfit_var)]
    if math.isfinite(budget):
        found.append(
            greedy_design(cov, cost, noise_var, k=k, budget=budget, per_flop=False, misfit_var=misfit_var)
        )
    found += [exchange_design(cov, cost, noise_var, d, k=k, budget=budget, misfit_var=misfit_var)
              for d in found if d.chosen]  # fmt: skip
    return min(found, key=lambda d: d.variance[-1])


@dataclass
class Suggestion:
    """The runs to train next and what they are expected to buy."""

    target: Target
    law: str
    candidates: Candidates  # the chosen ones, in pick order
    n_candidates: int  # candidates scored
    excluded: dict[str, int]
    design: Design
    interval: tuple[float, float]  # the target's current bootstrap interval (loss)
    prediction: float  # the target's loss under the full fit
    confidence: float
    discrepancy: Discrepancy | None = None  # the misfit model the design used (None: the law trusted)
    misfit_sd: list[float] = field(default_factory=list)  # its standard deviation at each chosen run

    @property
    def width(self) -> float:
        return self.interval[1] - self.interval[0]

    @property
    def expected_widths(self) -> list[float]:
        """Expected interval width after each pick: the current width times the ratio of the std devs."""
        v0 = self.design.variance[0]
        return [self.width * math.sqrt(v / v0) if v0 > 0 else self.width for v in self.design.variance[1:]]

    def table(self) -> pd.DataFrame:
        t = self.candidates.table.copy()
        t.insert(0, "pick", np.arange(1, len(t) + 1))
        t["flops"] = self.candidates.flops
        t["misfit_sd"] = self.misfit_sd
        t["expected_width"] = self.expected_widths
        return t

    def to_dict(self) -> dict:
        return {
            "target": self.target.label,
            "law": self.law,
            "prediction": self.prediction,
            "interval": list(self.interval),
            "confidence": self.confidence,
            "expected_width_after": self.expected_widths[-1] if self.design.chosen else self.width,
            "flops": self.design.flops,
            "rule": self.design.rule,
            "n_candidates": self.n_candidates,
            "excluded": self.excluded,
            "misfit": None
            if self.discrepancy is None
            else {
                "kappa": math.sqrt(self.discrepancy.kappa2),
                "lr": self.discrepancy.lr,
                "folds": self.discrepancy.n_folds,
                "heldout": self.discrepancy.n_heldout,
            },
            "runs": [
                {**p, "flops": float(c), "misfit_sd": float(m), "expected_width": w}
                for p, c, m, w in zip(
                    self.candidates.points,
                    self.candidates.flops,
                    self.misfit_sd,
                    self.expected_widths,
                    strict=True,
                )
            ],  # fmt: skip
        }


def suggest(
    res: FitResult,
    target: Target,
    candidates: Candidates,
    *,
    k: int = 8,
    budget: float = math.inf,
    misfit: bool = True,
) -> Suggestion:
    """The next ``k`` runs (``budget`` FLOPs in all at most) from ``candidates``, for a bootstrapped fit; with
    ``misfit`` the law's discrepancy is estimated from the fit's runs (:func:`fit_discrepancy`) and the design
    scores each pick by the unweighted refit's variance under it (:func:`greedy_design`)."""
    if res.bootstrap is None:
        raise MoelabError("suggest needs the fit's bootstrap ensemble (fit with bootstrap > 0)")
    if len(candidates) == 0:
        raise MoelabError(
            "no candidate run is left after the FLOP cap, the epoch limit and the family's shapes"
        )
    law = res.law
    theta = law.from_params(res.bootstrap.samples)
    t = target.log_values(law, theta)
    X_cand = law.features(candidates.table)
    preds = law.log_predict(theta, X_cand, np)
    nv = noise_variance(res)
    disc = (
        fit_discrepancy(law, [(res.data.X, res.data.logy)], [res.theta], [nv], res.delta)[0]
        if misfit
        else None
    )
    tau2 = None if disc is None else disc.variance(X_cand)
    design = design_from_ensemble(t, preds, candidates.flops, nv, k=k, budget=budget, misfit_var=tau2)
    lo, hi = res.bootstrap.interval(np.exp(t[np.isfinite(t)]))
    return Suggestion(
        target=target,
        law=law.name,
        candidates=candidates.subset(design.chosen),
        n_candidates=len(candidates),
        excluded=dict(candidates.excluded),
        design=design,
        interval=(float(lo), float(hi)),
        prediction=float(np.exp(target.log_values(law, res.theta[None])[0])),
        confidence=res.bootstrap.confidence,
        discrepancy=disc,
        misfit_sd=[0.0 if tau2 is None else math.sqrt(float(tau2[j])) for j in design.chosen],
    )


# ---------------------------------------------------------------------------------------------- sweep YAML
def sweep_dict(
    points: list[dict[str, Any]], base: dict[str, Any] | None, name: str, description: str
) -> dict:
    """A sweep spec (``generator: zip``, one explicit list per axis) that trains ``points`` on the ``base``
    spec's model/data/train sections (their axis keys and budgets removed) and its scheduling keys."""
    base = dict(base or {})
    names = [a for a in AXES if any(a in p for p in points)]
    if any(set(p) != set(names) for p in points):
        raise MoelabError("suggested runs must set the same axes")
    model = {k: v for k, v in (base.get("model") or {}).items() if k not in names}
    train = {k: v for k, v in (base.get("train") or {}).items() if k not in ("tokens", "flops")}
    out: dict[str, Any] = {"name": name, "description": description}
    if model:
        out["model"] = model
    if base.get("data"):
        out["data"] = dict(base["data"])
    if train:
        out["train"] = train
    out["generator"] = "zip"
    out["axes"] = {a: [_plain(p[a]) for p in points] for a in names}
    for key in ("seeds", "resources", "max_concurrency", "retries", "estimate"):
        if base.get(key) is not None:
            out[key] = base[key]
    return out


def _plain(v):
    """A YAML-friendly Python scalar (ints stay ints, floats keep 6 significant digits)."""
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    f = float(v)
    return int(f) if f == int(f) and abs(f) < 2**53 and abs(f) >= 1 else float(f"{f:.6g}")


# ---------------------------------------------------------------------------------------------- simulation
def grid_rung(df: pd.DataFrame, axis: str = "active_params") -> list[dict[str, Any]]:
    """The next rung of a regular grid along ``axis``: its largest value times the grid's mean ratio, crossed
    with the other axes' values of the runs at the current top rung."""
    vals = np.sort(df[axis].unique().astype(np.float64))
    if len(vals) < 2:
        raise MoelabError(f"a grid rung needs at least two values of {axis}")
    ratio = float(np.exp(np.mean(np.diff(np.log(vals)))))
    top = df[np.isclose(df[axis].to_numpy(np.float64), vals[-1])]
    others = [a for a in AXES if a in df.columns and a != axis]
    rows = top[others].drop_duplicates().to_dict("records")
    return [{axis: float(f"{vals[-1] * ratio:.4g}"), **r} for r in rows]


def random_design(
    cost: np.ndarray, budget: float, rng: np.random.Generator, k: int | None = None
) -> list[int]:
    """Candidates in a random order, each kept while the total stays within ``budget`` (and ``k`` runs)."""
    chosen, spent = [], 0.0
    for j in rng.permutation(len(cost)):
        if spent + cost[j] <= budget * (1 + 1e-9):
            chosen.append(int(j))
            spent += float(cost[j])
            if k is not None and len(chosen) >= k:
                break
    return chosen


def _bootstrap_samples(law: Law, datasets, starts, n_boot: int, seeds, delta: float) -> list[np.ndarray]:
    """Raw bootstrap optima [n_boot, P] for each (X, logy) dataset, all datasets in one batched L-BFGS."""
    weights = [resample_weights(len(y), n_boot, int(s)) for (_, y), s in zip(datasets, seeds, strict=True)]
    return refit_many(law, delta, datasets, weights, starts)


def _full_fits(law: Law, datasets, starts: np.ndarray, delta: float) -> list[np.ndarray]:
    """Best raw optimum of each dataset from every row of ``starts`` (unit weights)."""
    weights = [np.ones((1, len(y))) for _, y in datasets]
    return [t[0] for t in refit_many(law, delta, datasets, weights, [starts] * len(datasets))]


def compare_designs(
    law: Law,
    base: list[tuple[np.ndarray, np.ndarray]],
    pool: tuple[np.ndarray, list[np.ndarray], np.ndarray],
    rung: tuple[np.ndarray, list[np.ndarray], float],
    target: Target,
    seeds: list[int],
    *,
    n_boot: int = 64,
    n_starts: int = 64,
    delta: float = DELTA,
    misfit: bool = True,
) -> pd.DataFrame:
    """The comparison behind :func:`simulate` and :func:`replay`, per seed: the target's interval width
    before and after adding (a) the suggested candidates, (b) random candidates, (c) the rung, all within the
    rung's FLOPs.

    ``base[i]`` = (X, log loss) of the runs already done for seed i; ``pool`` = (X, [log losses per seed],
    FLOPs) of the candidates, with the loss each would show if run; ``rung`` = (X, [log losses per seed],
    FLOPs in all). The base fit starts from ``n_starts`` points of the law's grid; the bootstraps
    (``n_boot`` resamples) of every seed and design run as lanes of one batched L-BFGS. Returns one row per
    seed: ``width_before``, ``width_<design>``, ``flops_<design>``, ``runs_<design>``."""
    X_cand, y_cand, cost = pool
    X_rung, y_rung, budget = rung
    theta0 = _full_fits(law, base, law.starts(n_starts), delta)
    boot0 = _bootstrap_samples(law, base, [t[None] for t in theta0], n_boot, seeds, delta)
    designs: dict[str, list] = {"suggest": [], "random": [], "grid": []}
    nvs = []
    for i in range(len(seeds)):
        r = law.log_predict(theta0[i], base[i][0], np) - base[i][1]
        nvs.append(max(float(np.sum(r**2) / max(len(r) - law.n_params, 1)), 1e-10))
    discs = fit_discrepancy(law, base, theta0, nvs, delta) if misfit else [None] * len(seeds)
    for i, s in enumerate(seeds):
        t = target.log_values(law, boot0[i])
        preds = law.log_predict(boot0[i], X_cand, np)
        tau2 = discs[i].variance(X_cand) if misfit else None
        d = design_from_ensemble(t, preds, cost, nvs[i], k=len(cost), budget=budget, misfit_var=tau2)
        pick = random_design(cost, budget, np.random.default_rng([s, 2]))
        designs["suggest"].append((X_cand[d.chosen], y_cand[i][d.chosen], float(cost[d.chosen].sum())))
        designs["random"].append((X_cand[pick], y_cand[i][pick], float(cost[pick].sum())))
        designs["grid"].append((X_rung, y_rung[i], float(budget)))
    datasets, starts, boot_seeds = [], [], []
    for name in designs:
        for i, s in enumerate(seeds):
            X_new, y_new, _ = designs[name][i]
            datasets.append((np.concatenate([base[i][0], X_new]), np.concatenate([base[i][1], y_new])))
            starts.append(theta0[i][None])
            boot_seeds.append(s)
    boots = _bootstrap_samples(law, datasets, starts, n_boot, boot_seeds, delta)

    def width(theta):
        v = np.exp(target.log_values(law, theta))
        lo, hi = np.percentile(v[np.isfinite(v)], [2.5, 97.5])
        return float(hi - lo)

    rows = []
    for i, s in enumerate(seeds):
        row = {
            "seed": s,
            "width_before": width(boot0[i]),
            "kappa2": discs[i].kappa2 if misfit else 0.0,
            "lr": discs[i].lr if misfit else 0.0,
            "n_heldout": discs[i].n_heldout if misfit else 0,
        }
        for j, name in enumerate(designs):
            row[f"width_{name}"] = width(boots[j * len(seeds) + i])
            row[f"flops_{name}"] = designs[name][i][2]
            row[f"runs_{name}"] = len(designs[name][i][0])
        rows.append(row)
    return pd.DataFrame(rows)


def simulate(
    law: Law | str,
    truth: dict[str, float],
    base_points: pd.DataFrame,
    candidates: Candidates,
    rung: Candidates,
    target: Target,
    *,
    seeds: Iterable[int] = range(20),
    n_boot: int = 64,
    noise: float = 0.01,
    n_starts: int = 64,
    delta: float = DELTA,
    misfit: bool = True,
) -> pd.DataFrame:
    """:func:`compare_designs` on losses drawn from a known law: ``truth``'s prediction times
    exp(noise * N(0, 1)), a fresh draw per seed and run (a candidate shows the same draw in every design)."""
    law = get_law(law)
    seeds = list(seeds)
    theta = law.from_params(np.array([truth[p] for p in law.params]))

    def observe(X, s, stream):
        return law.log_predict(theta, X, np) + noise * np.random.default_rng([s, stream]).normal(size=len(X))

    X_base, X_cand, X_rung = (law.features(t) for t in (base_points, candidates.table, rung.table))
    base = [(X_base, observe(X_base, s, 1)) for s in seeds]
    pool = (X_cand, [observe(X_cand, s, 3) for s in seeds], candidates.flops)
    rung_ = (X_rung, [observe(X_rung, s, 4) for s in seeds], float(rung.flops.sum()))
    return compare_designs(
        law, base, pool, rung_, target, seeds, n_boot=n_boot, n_starts=n_starts, delta=delta, misfit=misfit
    )


def replay_split(
    df: pd.DataFrame, level: float, n_rung: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(done, pool, rung) of a real runs table for :func:`replay`: the ``n_rung`` runs nearest ``level``
    FLOPs (in log) are the next rung, the runs cheaper than all of them are done, the rest (the rung
    included) are the pool the design may pick from."""
    c = np.asarray(compute_of(df), np.float64)
    if not 0 < n_rung < len(df):
        raise MoelabError(f"n_rung must be in 1..{len(df) - 1}, got {n_rung}")
    rung = np.argsort(np.abs(np.log(c / level)), kind="stable")[:n_rung]
    done = c < c[rung].min()
    return df[done], df[~done], df.iloc[rung]


def replay(
    law: Law | str,
    done: pd.DataFrame,
    pool: pd.DataFrame,
    rung: pd.DataFrame,
    target: Target,
    *,
    seeds: Iterable[int] = range(20),
    n_boot: int = 64,
    n_starts: int = 64,
    delta: float = DELTA,
    misfit: bool = True,
) -> pd.DataFrame:
    """:func:`compare_designs` on real runs: ``done`` are the runs already trained, ``pool`` the runs that
    could be trained next and ``rung`` the grid's next rung (both with the losses they really reached: the
    design chooses without seeing them, the refit uses them), costs from their ``flops`` column (else 6ND).
    Seeds vary the bootstrap resamples and the random design."""
    law = get_law(law)
    seeds = list(seeds)
    X = {k: law.features(t) for k, t in (("done", done), ("pool", pool), ("rung", rung))}
    y = {
        k: np.log(t["loss"].to_numpy(np.float64)) for k, t in (("done", done), ("pool", pool), ("rung", rung))
    }
    base = [(X["done"], y["done"])] * len(seeds)
    pool_ = (X["pool"], [y["pool"]] * len(seeds), compute_of(pool))
    rung_ = (X["rung"], [y["rung"]] * len(seeds), float(compute_of(rung).sum()))
    return compare_designs(
        law, base, pool_, rung_, target, seeds, n_boot=n_boot, n_starts=n_starts, delta=delta,
        misfit=misfit,
    )  # fmt: skip
