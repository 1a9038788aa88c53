"""The registry of parametric scaling laws.

Every law predicts ``log L`` from a feature matrix built from a runs table, with parameters in *raw*
coordinates (logs of positive coefficients) so that the fit is unconstrained in practice and sums of positive
terms are a log-sum-exp (Hoffmann et al. 2022, Approach 3). Each law carries named parameters, raw-coordinate
bounds, an initialisation grid (the starts of :func:`analysis.fit.fit`) and a vectorised ``predict``.

Laws (formulas: ../shared/LAWS.md; published coefficient sets: :mod:`analysis.published`):

- ``chinchilla``  L = E + A/N^alpha + B/D^beta                      (Hoffmann et al. 2022, eq. 2)
- ``granularity`` L = c + (g/G^gamma + a)/N^alpha + b/D^beta           (Krajewski et al. 2024, eq. 6)
- ``clark``       log10 L = a log10 N + b log10 Ê + c log10 N log10 Ê + d (Clark et al. 2022, eq. 9),
                  1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max
- ``joint_moe``   L = a Ê^delta N^(alpha + gamma ln Ê) + b Ê^omega D^(beta + zeta ln Ê) + c
                  (Ludziejewski et al. 2025; Ê with Clark's S-BASE E_start, E_max held fixed)
- ``shared_ratio`` moelab's extension of ``joint_moe``: the activated-parameter term of MoE runs is multiplied
                  by exp(kappa (r - r_star)^2), r = shared_ratio, so the law has an interior best shared share
                  r_star and nests ``joint_moe`` at kappa = 0 (two extra parameters).

``N`` is ``active_params`` (non-embedding), ``D`` is ``tokens``, ``E`` is ``n_experts`` (1 = dense), ``G`` is
``granularity``. Clark et al. report base-10 logs (their S-BASE coefficients give L ~ 2.3 for a dense 1B
model only in base 10), so ``clark`` uses base 10 and its ``a, b, c, d`` are comparable to the paper's.
Chinchilla's Approach 2 (``isoflop``) is not a parametric law of (N, D); see :mod:`analysis.isoflop`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from analysis.published import PUBLISHED
from moelab.errors import MoelabError

LN10 = float(np.log(10.0))
# Clark et al. 2022, S-BASE fit: the Ê constants joint_moe and shared_ratio hold fixed
CLARK_E_START, CLARK_E_MAX = (PUBLISHED["clark2022"].params[k] for k in ("E_start", "E_max"))


def _lse(xp, *terms):
    """Numerically stable log(sum(exp(terms))) of broadcastable arrays."""
    m = terms[0]
    for t in terms[1:]:
        m = xp.maximum(m, t)
    return m + xp.log(sum(xp.exp(t - m) for t in terms))


def log_e_hat(xp, E, e_start, e_max):
    """log Ê of Clark et al. 2022: 1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max."""
    inner = E - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)
    return -xp.log(1.0 / inner + 1.0 / e_max)


@dataclass(frozen=True, eq=False)
class Law:
    """A parametric scaling law.

    ``raw`` names the optimisation coordinates, ``params`` the reported ones; ``to_params`` maps raw ->
    reported (vectorised over leading axes) and ``from_params`` back. ``log_predict(theta, X, xp)`` returns
    log L for raw parameters ``theta`` [..., P] and features ``X`` [n, k] with ``xp`` = numpy or jax.numpy;
    its output broadcasts to [..., n].
    """

    name: str
    title: str
    reference: str
    columns: tuple[str, ...]  # runs-table columns the features are built from (besides ``loss``)
    raw: tuple[str, ...]
    params: tuple[str, ...]
    grid: tuple[tuple[float, ...], ...]  # start values per raw coordinate
    bounds: tuple[tuple[float, float], ...]  # raw-coordinate box
    log_predict: Callable
    to_params: Callable
    from_params: Callable
    features: Callable  # DataFrame -> X [n, k]
    needs_variation: tuple[str, ...] = ()  # columns that must not be constant
    published: dict = field(default_factory=dict)
    max_starts: int = 4500
    nested_in: str | None = None  # the simpler law this one extends (for held-out comparisons)

    @property
    def n_params(self) -> int:
        return len(self.raw)

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other) -> bool:
        return isinstance(other, Law) and other.name == self.name

    def starts(self, max_starts: int | None = None, seed: int = 0) -> np.ndarray:
        """The initialisation grid [S, P] (raw); a seeded subsample when larger than ``max_starts``."""
        cap = self.max_starts if max_starts is None else max_starts
        sizes = [len(g) for g in self.grid]
        total = int(np.prod(sizes))
        if total <= cap:
            return np.array(list(itertools.product(*self.grid)), dtype=np.float64)
        rng = np.random.default_rng(seed)
        pick = rng.choice(total, size=cap, replace=False)
        idx = np.stack(np.unravel_index(pick, sizes), axis=-1)
        return np.array([[self.grid[j][i] for j, i in enumerate(row)] for row in idx], dtype=np.float64)

    def predict(self, params, data) -> np.ndarray:
        """Loss predicted for ``data`` (a runs DataFrame or a feature matrix) by ``params``.

        ``params`` is a dict of reported parameters, or an array [..., P] of them (e.g. bootstrap samples).
        """
        X = self.features(data) if hasattr(data, "columns") else np.asarray(data, dtype=np.float64)
        if isinstance(params, dict):
            params = np.array([params[p] for p in self.params], dtype=np.float64)
        theta = self.from_params(np.asarray(params, dtype=np.float64))
        return np.exp(self.log_predict(theta, X, np))


def _cols(df, names) -> np.ndarray:
    return np.stack([np.asarray(df[c], dtype=np.float64) for c in names], axis=-1)


def _t(theta, i):
    """Raw parameter i of theta [..., P], shaped to broadcast against points ([..., 1])."""
    return theta[..., i, None]


def _exp_cols(theta, which):
    out = np.array(theta, dtype=np.float64, copy=True)
    out[..., which] = np.exp(out[..., which])
    return out


def _log_cols(p, which):
    out = np.array(p, dtype=np.float64, copy=True)
    out[..., which] = np.log(out[..., which])
    return out


# ------------------------------------------------------------ chinchilla (Hoffmann et al. 2022, Approach 3)
def _chin_features(df):
    return np.log(_cols(df, ("active_params", "tokens")))


def _chin_log_predict(theta, X, xp):
    a, b, e, alpha, beta = (_t(theta, i) for i in range(5))
    logN, logD = X[:, 0], X[:, 1]
    return _lse(xp, a - alpha * logN, b - beta * logD, e)


def _chin_to(theta):  # raw (a, b, e, alpha, beta) -> (E, A, B, alpha, beta)
    theta = np.asarray(theta, dtype=np.float64)
    return np.stack(
        [np.exp(theta[..., 2]), np.exp(theta[..., 0]), np.exp(theta[..., 1]), theta[..., 3], theta[..., 4]],
        axis=-1,
    )


def _chin_from(p):
    p = np.asarray(p, dtype=np.float64)
    return np.stack([np.log(p[..., 1]), np.log(p[..., 2]), np.log(p[..., 0]), p[..., 3], p[..., 4]], axis=-1)


CHINCHILLA = Law(
    name="chinchilla",
    title="L = E + A/N^alpha + B/D^beta",
    reference="Hoffmann et al. 2022, Approach 3; grid and Huber protocol as in Besiroglu et al. 2024",
    columns=("active_params", "tokens"),
    raw=("a", "b", "e", "alpha", "beta"),
    params=("E", "A", "B", "alpha", "beta"),
    # Hoffmann et al.'s grid: a, b in {0, 5, ..., 25}; e in {-1, -.5, ..., 1}; alpha, beta in {0, .5, ..., 2}.
    grid=(
        tuple(np.arange(0, 26, 5.0)),
        tuple(np.arange(0, 26, 5.0)),
        tuple(np.arange(-1, 1.01, 0.5)),
        tuple(np.arange(0, 2.01, 0.5)),
        tuple(np.arange(0, 2.01, 0.5)),
    ),
    bounds=((-10.0, 60.0), (-10.0, 60.0), (-5.0, 5.0), (0.0, 3.0), (0.0, 3.0)),
    log_predict=_chin_log_predict,
    to_params=_chin_to,
    from_params=_chin_from,
    features=_chin_features,
    needs_variation=("active_params", "tokens"),
    published=dict(PUBLISHED["hoffmann2022"].params),
)


# ---------------------------------------------------------------- granularity (Krajewski et al. 2024)
def _gran_features(df):
    return np.log(_cols(df, ("active_params", "tokens", "granularity")))


def _gran_log_predict(theta, X, xp):
    lc, lg, gamma, la, alpha, lb, beta = (_t(theta, i) for i in range(7))
    logN, logD, logG = X[:, 0], X[:, 1], X[:, 2]
    return _lse(xp, lc, lg - gamma * logG - alpha * logN, la - alpha * logN, lb - beta * logD)


_GRAN_LOG = [0, 1, 3, 5]  # c, g, a, b are positive: raw = log

GRANULARITY = Law(
    name="granularity",
    title="L = c + (g/G^gamma + a)/N^alpha + b/D^beta",
    reference="Krajewski et al. 2024, Scaling Laws for Fine-Grained Mixture of Experts",
    columns=("active_params", "tokens", "granularity"),
    raw=("log_c", "log_g", "gamma", "log_a", "alpha", "log_b", "beta"),
    params=("c", "g", "gamma", "a", "alpha", "b", "beta"),
    grid=((-1.0, 0.5), (-2.0, 1.0), (0.0, 0.6), (0.0, 3.0, 6.0), (0.1, 0.4), (0.0, 3.0, 6.0), (0.1, 0.4)),
    bounds=((-6.0, 3.0), (-12.0, 12.0), (0.0, 3.0), (-10.0, 40.0), (0.0, 2.0), (-10.0, 40.0), (0.0, 2.0)),
    log_predict=_gran_log_predict,
    to_params=lambda t: _exp_cols(t, _GRAN_LOG),
    from_params=lambda p: _log_cols(p, _GRAN_LOG),
    features=_gran_features,
    needs_variation=("active_params", "tokens", "granularity"),
    published=dict(PUBLISHED["krajewski2024"].params),
)


# ---------------------------------------------------------------- clark (Clark et al. 2022)
def _clark_features(df):
    return np.stack(
        [
            np.log10(np.asarray(df["active_params"], dtype=np.float64)),
            np.asarray(df["n_experts"], dtype=np.float64),
        ],
        axis=-1,
    )


def _clark_log_predict(theta, X, xp):
    a, b, c, d, ls, lm = (_t(theta, i) for i in range(6))
    log10N, E = X[:, 0], X[:, 1]
    log10E = log_e_hat(xp, E, xp.exp(ls), xp.exp(lm)) / LN10
    return LN10 * (a * log10N + b * log10E + c * log10N * log10E + d)


CLARK = Law(
    name="clark",
    title="log10 L = a log10 N + b log10 Ê + c log10 N log10 Ê + d",
    reference="Clark et al. 2022, Unified Scaling Laws for Routed Language Models",
    columns=("active_params", "n_experts"),
    raw=("a", "b", "c", "d", "log_E_start", "log_E_max"),
    params=("a", "b", "c", "d", "E_start", "E_max"),
    # c, E_start and E_max span the fits of Clark et al.'s released S-BASE, RL-R and Hash runs (c up to 0.013,
    # E_start up to 4.4, E_max up to 480): a narrower grid raised false grid-edge warnings on them
    grid=((-0.2, -0.05), (-0.3, -0.05), (-0.01, 0.01, 0.03), (0.5, 1.5), (0.0, 1.0, 2.0), (4.0, 6.0, 8.0)),
    bounds=(
        (-2.0, 2.0),
        (-2.0, 2.0),
        (-1.0, 1.0),
        (-10.0, 10.0),
        (0.0, np.log(20.0)),
        (np.log(25.0), np.log(1e5)),
    ),
    log_predict=_clark_log_predict,
    to_params=lambda t: _exp_cols(t, [4, 5]),
    from_params=lambda p: _log_cols(p, [4, 5]),
    features=_clark_features,
    needs_variation=("active_params", "n_experts"),
    published=dict(PUBLISHED["clark2022"].params),
    max_starts=216,
)


# ---------------------------------------------------------------- joint_moe (Ludziejewski et al. 2025)
def _joint_features(df):
    N, D = np.log(_cols(df, ("active_params", "tokens"))).T
    lE = log_e_hat(np, np.asarray(df["n_experts"], dtype=np.float64), CLARK_E_START, CLARK_E_MAX)
    return np.stack([N, D, lE], axis=-1)


def _joint_terms(theta, X):
    la, lb, lc, alpha, beta, delta, gamma, omega, zeta = (_t(theta, i) for i in range(9))
    logN, logD, lE = X[:, 0], X[:, 1], X[:, 2]
    t_n = la + delta * lE + (alpha + gamma * lE) * logN
    t_d = lb + omega * lE + (beta + zeta * lE) * logD
    return t_n, t_d, lc


def _joint_log_predict(theta, X, xp):
    t_n, t_d, lc = _joint_terms(theta, X)
    return _lse(xp, t_n, t_d, lc)


_JOINT_PARAMS = ("a", "b", "c", "alpha", "beta", "delta", "gamma", "omega", "zeta")
_JOINT_GRID = (
    (2.0, 6.0),
    (2.0, 6.0),
    (-1.0, 0.5),
    (-0.5, -0.2),
    (-0.5, -0.2),
    (0.0,),
    (-0.02, 0.02),
    (0.0,),
    (-0.02, 0.02),
)
_JOINT_BOUNDS = (
    (-10.0, 40.0),
    (-10.0, 40.0),
    (-6.0, 3.0),
    (-2.0, 0.0),
    (-2.0, 0.0),
    (-3.0, 3.0),
    (-0.5, 0.5),
    (-3.0, 3.0),
    (-0.5, 0.5),
)

JOINT_MOE = Law(
    name="joint_moe",
    title="L = a Ê^delta N^(alpha + gamma ln Ê) + b Ê^omega D^(beta + zeta ln Ê) + c",
    reference="Ludziejewski et al. 2025, Joint MoE Scaling Laws (Ê as Clark et al. 2022, S-BASE constants)",
    columns=("active_params", "tokens", "n_experts"),
    raw=("log_a", "log_b", "log_c", "alpha", "beta", "delta", "gamma", "omega", "zeta"),
    params=_JOINT_PARAMS,
    grid=_JOINT_GRID,
    bounds=_JOINT_BOUNDS,
    log_predict=_joint_log_predict,
    to_params=lambda t: _exp_cols(t, [0, 1, 2]),
    from_params=lambda p: _log_cols(p, [0, 1, 2]),
    features=_joint_features,
    needs_variation=("active_params", "tokens", "n_experts"),
)


# ---------------------------------------------------------------- shared_ratio (moelab's extension)
def _shared_features(df):
    X = _joint_features(df)
    moe = (np.asarray(df["n_experts"], dtype=np.float64) > 1).astype(np.float64)
    r = np.nan_to_num(np.asarray(df["shared_ratio"], dtype=np.float64), nan=0.0)
    return np.concatenate([X, (moe * r)[:, None], moe[:, None]], axis=-1)


def _shared_log_predict(theta, X, xp):
    t_n, t_d, lc = _joint_terms(theta[..., :9], X)
    kappa, r_star = _t(theta, 9), _t(theta, 10)
    r, moe = X[:, 3], X[:, 4]
    return _lse(xp, t_n + moe * kappa * (r - r_star) ** 2, t_d, lc)


SHARED_RATIO = Law(
    name="shared_ratio",
    title="joint_moe with the N-term of MoE runs times exp(kappa (shared_ratio - r_star)^2)",
    reference="moelab (this lab): extension of Ludziejewski et al. 2025 with the shared-expert share",
    columns=("active_params", "tokens", "n_experts", "shared_ratio"),
    raw=("log_a", "log_b", "log_c", "alpha", "beta", "delta", "gamma", "omega", "zeta", "kappa", "r_star"),
    params=(*_JOINT_PARAMS, "kappa", "r_star"),
    grid=(*_JOINT_GRID, (0.0, 1.0), (0.25, 0.5)),
    bounds=(*_JOINT_BOUNDS, (0.0, 50.0), (0.0, 1.0)),
    log_predict=_shared_log_predict,
    to_params=lambda t: _exp_cols(t, [0, 1, 2]),
    from_params=lambda p: _log_cols(p, [0, 1, 2]),
    features=_shared_features,
    needs_variation=("active_params", "tokens", "n_experts", "shared_ratio"),
    nested_in="joint_moe",
)

LAWS: dict[str, Law] = {law.name: law for law in (CHINCHILLA, GRANULARITY, CLARK, JOINT_MOE, SHARED_RATIO)}
ALL_LAWS = (*LAWS, "isoflop")  # isoflop: Chinchilla Approach 2 (analysis.isoflop)


def get_law(name: str | Law) -> Law:
    """The registered law called ``name`` (a :class:`Law` passes through)."""
    if isinstance(name, Law):
        return name
    if name not in LAWS:
        raise MoelabError(f"unknown law {name!r}; choose one of {', '.join(ALL_LAWS)}")
    return LAWS[name]
