"""Batched L-BFGS in JAX: thousands of small independent minimisations as one vmapped, jitted loop.

A scaling-law fit is a 5-11 parameter problem on a few hundred points, solved from thousands of starting
points (Hoffmann et al. 2022 use a 4,500-point grid) and refitted a thousand times for the bootstrap. One
SciPy call per start costs minutes; here every start is one lane of a ``jax.vmap`` over a ``lax.while_loop``,
with exact gradients from ``jax.value_and_grad``, in float64.

The algorithm is textbook L-BFGS (Nocedal & Wright 2006, Algorithms 7.4/7.5: two-loop recursion with H0 = (s'y
/ y'y) I, curvature pairs with s'y <= 1e-10 |y|^2 skipped) with a projected backtracking Armijo line search
(c1 = 1e-4, safeguarded quadratic interpolation, Nocedal & Wright Section 3.5) for box bounds. To keep lanes
in lock-step, each loop iteration makes exactly one function evaluation per lane: a rejected trial shrinks the
step and tries again at the next iteration, so one lane that backtracks does not make all others wait. A lane
stops when its projected gradient is below ``gtol``, its accepted step lowers the objective by less than
``ftol * |f|`` (as SciPy's L-BFGS-B ``factr``), or 25 backtracks fail. The host runs the loop in chunks and
packs the lanes still running into a smaller batch, so a few slow lanes do not hold the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

HISTORY = 10  # stored curvature pairs (SciPy's L-BFGS-B default)
CHUNK = 25  # iterations per jitted call before the host repacks the running lanes
MAX_BACKTRACKS = 25


@dataclass(frozen=True)
class Solution:
    """Per-lane results of :func:`minimize_batch` (NumPy arrays, leading axis = lane)."""

    x: np.ndarray  # [M, P] final points
    f: np.ndarray  # [M] final objective values
    grad_norm: np.ndarray  # [M] max-abs projected gradient at x
    iterations: np.ndarray  # [M] function evaluations
    converged: np.ndarray  # [M] bool: stopped by a tolerance (not by maxiter or a failed line search)


def two_loop(g, S, Y, rho, count, xp):
    """H·g by the L-BFGS two-loop recursion; S, Y hold the newest pair at index 0, ``count`` valid pairs."""
    m = S.shape[0]
    q = g
    alphas = []
    for i in range(m):
        a = xp.where(i < count, rho[i] * xp.dot(S[i], q), 0.0)
        q = q - a * Y[i]
        alphas.append(a)
    yy = xp.dot(Y[0], Y[0])
    gamma = xp.where(count > 0, xp.dot(S[0], Y[0]) / xp.where(yy > 0, yy, 1.0), 1.0)
    r = gamma * q
    for i in reversed(range(m)):
        b = xp.where(i < count, rho[i] * xp.dot(Y[i], r), 0.0)
        r = r + xp.where(i < count, alphas[i] - b, 0.0) * S[i]
    return r


@lru_cache(maxsize=64)
def _compiled(fun: Callable, in_axes: tuple, ftol: float, gtol: float):
    """Jitted, vmapped (init, run): ``run`` advances every lane by up to ``steps`` evaluations."""
    import jax
    import jax.numpy as jnp

    vg = jax.value_and_grad(fun)

    def direction(g, S, Y, rho, count):
        d = -two_loop(g, S, Y, rho, count, jnp)
        bad = ~(jnp.dot(g, d) < 0) | ~jnp.all(jnp.isfinite(d))
        d = jnp.where(bad, -g, d)
        gn = jnp.sqrt(jnp.dot(g, g))
        t = jnp.where(bad | (count == 0), jnp.minimum(1.0, 1.0 / jnp.maximum(gn, 1e-30)), 1.0)
        return d, t

    def step(st, lo, hi, args):
        x, f, g, d, t = st["x"], st["f"], st["g"], st["d"], st["t"]
        xt = jnp.clip(x + t * d, lo, hi)
        ft, gt = vg(xt, *args)
        dec = jnp.dot(g, xt - x)
        ok = jnp.isfinite(ft) & (ft <= f + 1e-4 * dec) & jnp.all(jnp.isfinite(gt))
        # accepted: store the pair, new direction
        s, y = xt - x, gt - g
        sy = jnp.dot(s, y)
        push = ok & (sy > 1e-10 * jnp.dot(y, y))
        S = jnp.where(push, jnp.roll(st["S"], 1, axis=0).at[0].set(s), st["S"])
        Y = jnp.where(push, jnp.roll(st["Y"], 1, axis=0).at[0].set(y), st["Y"])
        rho = jnp.where(push, jnp.roll(st["rho"], 1).at[0].set(1.0 / jnp.where(push, sy, 1.0)), st["rho"])
        count = jnp.where(push, jnp.minimum(st["count"] + 1, S.shape[0]), st["count"])
        x1, f1, g1 = jnp.where(ok, xt, x), jnp.where(ok, ft, f), jnp.where(ok, gt, g)
        d_new, t_new = direction(g1, S, Y, rho, count)
        # rejected: shrink the step (safeguarded quadratic interpolation of f along d)
        gd = jnp.dot(g, d)
        denom = 2.0 * (ft - f - gd * t)
        t_q = jnp.where(
            jnp.isfinite(ft) & (denom > 0), -gd * t * t / jnp.where(denom > 0, denom, 1.0), 0.5 * t
        )
        t_shrunk = jnp.clip(t_q, 0.1 * t, 0.5 * t)
        nback = jnp.where(ok, 0, st["nback"] + 1)
        small_f = ok & (f - ft <= ftol * jnp.abs(f))
        pg = jnp.max(jnp.abs(jnp.clip(x1 - g1, lo, hi) - x1))
        conv = (pg <= gtol) | small_f
        failed = nback > MAX_BACKTRACKS
        return dict(
            x=x1,
            f=f1,
            g=g1,
            S=S,
            Y=Y,
            rho=rho,
            count=count,
            d=jnp.where(ok, d_new, d),
            t=jnp.where(ok, t_new, t_shrunk),
            nback=nback,
            it=st["it"] + 1,
            done=conv | failed,
            conv=conv,
        )

    def run(state, lo, hi, steps, *args):
        def cond(c):
            st, k = c
            return (~st["done"]) & (k < steps)

        def body(c):
            st, k = c
            return step(st, lo, hi, args), k + 1

        st, _ = jax.lax.while_loop(cond, body, (state, 0))
        return st

    def init(x0, lo, hi, *args):
        x0 = jnp.clip(x0, lo, hi)
        f, g = vg(x0, *args)
        P = x0.shape[0]
        S = jnp.zeros((HISTORY, P))
        d, t = direction(g, S, S, jnp.zeros(HISTORY), 0)
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g))
        return dict(
            x=x0,
            f=jnp.where(finite, f, jnp.inf),
            g=jnp.where(finite, g, 0.0),
            S=S,
            Y=S,
            rho=jnp.zeros(HISTORY),
            count=jnp.asarray(0),
            d=d,
            t=t,
            nback=jnp.asarray(0),
            it=jnp.asarray(0),
            done=~finite,
            conv=jnp.asarray(False),
        )

    vrun = jax.vmap(run, in_axes=(0, None, None, None, *in_axes))
    vinit = jax.vmap(init, in_axes=(0, None, None, *in_axes))
    return jax.jit(vinit), jax.jit(vrun, static_argnums=(3,))


def _bucket(n: int, full: int) -> int:
    """Batch size for n live lanes: ``full`` quartered while n fits, multiples of 8 (few compiled shapes)."""
    b = full
    while b > 8 and n <= (b + 3) // 4:
        b = (b + 3) // 4
    return max(8, -(-b // 8) * 8) if b < full else full


def minimize_batch(
    fun: Callable,
    x0: np.ndarray,
    args: tuple = (),
    batched: tuple[bool, ...] = (),
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    maxiter: int = 2000,
    ftol: float = 1e-10,
    gtol: float = 1e-9,
    x64: bool = True,
) -> Solution:
    """Minimise ``fun(x, *args)`` from every row of ``x0`` [M, P] at once.

    ``fun`` must be a pure JAX function of one parameter vector (it is vmapped). ``batched[i]`` says whether
    ``args[i]`` has a leading lane axis of size M (per-lane data, e.g. bootstrap weights) or is shared by all
    lanes. ``fun`` must be hashable and stable (a module-level function or a cached closure) so the compiled
    loop is reused between calls. ``maxiter`` counts function evaluations. Computed in float64, or in
    float32 with ``x64=False`` (about 2.5x faster on CPU: a coarse pass whose best lanes are polished in
    float64).
    """
    import jax
    import jax.numpy as jnp

    batched = tuple(batched) + (False,) * (len(args) - len(batched))
    x0 = np.asarray(x0, dtype=np.float64)
    M, P = x0.shape
    lo = np.full(P, -np.inf) if lower is None else np.asarray(lower, np.float64)
    hi = np.full(P, np.inf) if upper is None else np.asarray(upper, np.float64)
    np_args = [np.asarray(a, dtype=np.float64) for a in args]
    with jax.enable_x64(x64):
        init, run = _compiled(fun, tuple(0 if b else None for b in batched), float(ftol), float(gtol))
        jlo, jhi = jnp.asarray(lo), jnp.asarray(hi)

        def lane_args(idx):
            return [
                jnp.asarray(a[idx]) if b else jnp.asarray(a) for a, b in zip(np_args, batched, strict=True)
            ]

        full = _bucket(M, M)
        idx = np.concatenate([np.arange(M), np.zeros(full - M, np.int64)])
        state = init(jnp.asarray(x0[idx]), jlo, jhi, *lane_args(idx))
        out = {k: np.array(v)[:M] for k, v in state.items()}
        out["x"], out["f"], out["g"] = (out[k].astype(np.float64) for k in ("x", "f", "g"))
        active, B = np.arange(M), full
        while True:
            live = active[~out["done"][active] & (out["it"][active] < maxiter)]
            if live.size == 0:
                break
            nb = _bucket(live.size, B)
            if nb != B or live.size != active.size:
                B = nb
                idx = np.concatenate([live, np.full(B - live.size, live[0])])
                state = {k: jnp.asarray(v[idx]) for k, v in out.items()}
                active = live
            else:
                idx = np.concatenate([active, np.full(B - active.size, active[0])])
            steps = int(min(CHUNK, maxiter - int(out["it"][active].min())))
            state = run(state, jlo, jhi, steps, *lane_args(idx))
            host = {k: np.asarray(v) for k, v in state.items()}
            for k, v in host.items():
                out[k][active] = v[: active.size]
    pg = np.max(np.abs(np.clip(out["x"] - out["g"], lo, hi) - out["x"]), axis=-1)
    f = np.where(np.isfinite(out["f"]), out["f"], np.inf)
    return Solution(x=out["x"], f=f, grad_norm=pg, iterations=out["it"], converged=out["conv"])
