"""Batched L-BFGS in JAX: thousands of small independent minimisations as one vmapped, jitted loop.

A scaling-law fit is a 5-11 parameter problem on a few hundred points, solved from thousands of starting
points (Hoffmann et al. 2022 use a 4,500-point grid) and refitted a thousand times for the bootstrap. One
SciPy call per start costs minutes; here every start is one lane of a ``jax.vmap`` over a ``lax.while_loop``,
with exact gradients from ``jax.value_and_grad``, in float64 (or float32 for a coarse pass).

The algorithm is textbook L-BFGS (Nocedal & Wright 2006, Algorithms 7.4/7.5: two-loop recursion with H0 = (s'y
/ y'y) I, curvature pairs with s'y <= 1e-10 |y|^2 skipped) with a projected backtracking Armijo line search
(c1 = 1e-4, safeguarded quadratic interpolation, Nocedal & Wright Section 3.5) for box bounds. To keep lanes
in lock-step, each loop iteration makes exactly one function evaluation per lane: a rejected trial shrinks the
step and tries again at the next iteration, so one lane that backtracks does not make all others wait. A lane
stops when its projected gradient is below ``gtol``, its accepted step lowers the objective by less than
``ftol * |f|`` (as SciPy's L-BFGS-B ``factr``), or 25 backtracks fail along steepest descent (a failure along
the L-BFGS direction first clears the memory). Variables held at a bound by their gradient are fixed when the
direction is computed (projected L-BFGS). Lanes stream through a fixed batch of ``SLOTS`` compiled lanes:
the host runs ``CHUNK`` iterations, then refills the slots of finished lanes with waiting starts, so one
compiled shape serves any number of starts and a few slow lanes do not hold the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
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
    """H·g by the L-BFGS two-loop recursion; S, Y hold the newest pair at index 0, ``count`` valid pairs.

    ``xp`` is numpy or jax.numpy; with jax the loops are ``lax.fori_loop`` (a small compiled program).
    """
    m = S.shape[0]
    valid = xp.arange(m) < count
    yy = xp.dot(Y[0], Y[0])
    gamma = xp.where(count > 0, xp.dot(S[0], Y[0]) / xp.where(yy > 0, yy, 1.0), 1.0)
    if xp is np:
        q, alphas = g.copy(), np.zeros(m)
        for i in range(m):
            alphas[i] = rho[i] * np.dot(S[i], q) if valid[i] else 0.0
            q = q - alphas[i] * Y[i]
        r = gamma * q
        for i in reversed(range(m)):
            if valid[i]:
                r = r + (alphas[i] - rho[i] * np.dot(Y[i], r)) * S[i]
        return r

    def first(i, c):
        q, al = c
        a = xp.where(valid[i], rho[i] * xp.dot(S[i], q), 0.0)
        return q - a * Y[i], al.at[i].set(a)

    q, alphas = jax.lax.fori_loop(0, m, first, (g, xp.zeros(m, g.dtype)))

    def second(j, r):
        i = m - 1 - j
        b = xp.where(valid[i], rho[i] * xp.dot(Y[i], r), 0.0)
        return r + xp.where(valid[i], alphas[i] - b, 0.0) * S[i]

    return jax.lax.fori_loop(0, m, second, gamma * q)


@lru_cache(maxsize=64)
def _compiled(fun: Callable, in_axes: tuple, ftol: float, gtol: float):
    """Jitted, vmapped (init, run): ``run`` advances every lane by up to ``steps`` evaluations."""
    vg = jax.value_and_grad(fun)

    def direction(g, S, Y, rho, count, x, lo, hi):
        # variables held at a bound by the gradient stay fixed (projected L-BFGS on the free variables)
        free = ~((x <= lo) & (g > 0)) & ~((x >= hi) & (g < 0))
        gf = jnp.where(free, g, 0.0)
        d = jnp.where(free, -two_loop(gf, S, Y, rho, count, jnp), 0.0)
        bad = ~(jnp.dot(gf, d) < 0) | ~jnp.all(jnp.isfinite(d))
        d = jnp.where(bad, -gf, d)
        gn = jnp.sqrt(jnp.dot(gf, gf))
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
        d_new, t_new = direction(g1, S, Y, rho, count, x1, lo, hi)
        # rejected: shrink the step (safeguarded quadratic interpolation of f along d)
        gd = jnp.dot(g, d)
        denom = 2.0 * (ft - f - gd * t)
        t_q = jnp.where(
            jnp.isfinite(ft) & (denom > 0), -gd * t * t / jnp.where(denom > 0, denom, 1.0), 0.5 * t
        )
        t_shrunk = jnp.clip(t_q, 0.1 * t, 0.5 * t)
        nback = jnp.where(ok, 0, st["nback"] + 1)
        # a line search that fails along the L-BFGS direction restarts once from steepest descent
        restart = (nback > MAX_BACKTRACKS) & (count > 0)
        d_sd, t_sd = direction(g, S, Y, rho, 0, x, lo, hi)
        count = jnp.where(restart, 0, count)
        nback = jnp.where(restart, 0, nback)
        small_f = ok & jnp.isfinite(f) & (f - ft <= ftol * jnp.abs(f))
        pg = jnp.max(jnp.abs(jnp.clip(x1 - g1, lo, hi) - x1))
        conv = (pg <= gtol) | small_f
        failed = (nback > MAX_BACKTRACKS) | (~jnp.isfinite(f) & ~ok)
        return dict(
            x=x1,
            f=f1,
            g=g1,
            S=S,
            Y=Y,
            rho=rho,
            count=count,
            d=jnp.where(ok, d_new, jnp.where(restart, d_sd, d)),
            t=jnp.where(ok, t_new, jnp.where(restart, t_sd, t_shrunk)),
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

    vrun = jax.vmap(run, in_axes=(0, None, None, None, *in_axes))
    return jax.jit(vrun, static_argnums=(3,))


SLOTS = 512  # lanes per compiled batch; more starts stream through the slots as earlier ones finish


def fresh_state(x0: np.ndarray, dtype) -> dict[str, np.ndarray]:
    """Host state of lanes that have not been evaluated yet: f = inf and t = 0, so the first iteration
    evaluates f and g at x0 and accepts them (s = 0 stores no curvature pair)."""
    B, P = x0.shape
    return dict(
        x=x0.astype(dtype),
        f=np.full(B, np.inf, dtype),
        g=np.zeros((B, P), dtype),
        S=np.zeros((B, HISTORY, P), dtype),
        Y=np.zeros((B, HISTORY, P), dtype),
        rho=np.zeros((B, HISTORY), dtype),
        count=np.zeros(B, np.int32),
        d=np.zeros((B, P), dtype),
        t=np.zeros(B, dtype),
        nback=np.zeros(B, np.int32),
        it=np.zeros(B, np.int32),
        done=np.zeros(B, bool),
        conv=np.zeros(B, bool),
    )


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
    batched = tuple(batched) + (False,) * (len(args) - len(batched))
    x0 = np.asarray(x0, dtype=np.float64)
    M, P = x0.shape
    lo = np.full(P, -np.inf) if lower is None else np.asarray(lower, np.float64)
    hi = np.full(P, np.inf) if upper is None else np.asarray(upper, np.float64)
    np_args = [np.asarray(a, dtype=np.float64) for a in args]
    dtype = np.float64 if x64 else np.float32
    x0 = np.clip(x0, lo, hi)
    with jax.enable_x64(x64):
        run = _compiled(fun, tuple(0 if b else None for b in batched), float(ftol), float(gtol))
        jlo, jhi = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
        shared = [None if b else jnp.asarray(a, dtype) for a, b in zip(np_args, batched, strict=True)]
        B = min(SLOTS, max(16, -(-M // 8) * 8))  # >= 16: one compiled polish loop for 1..16 starts
        out = fresh_state(x0, dtype)
        slot = np.full(B, -1)  # lane held by each slot (-1: idle)
        state = fresh_state(np.repeat(x0[:1], B, axis=0), dtype)
        state["done"][:] = True
        queue = list(range(M - 1, -1, -1))  # popped from the end: lanes in order
        while True:
            idle = np.flatnonzero(slot < 0)[: len(queue)]  # fill idle slots from the queue
            if idle.size:
                lanes = np.array([queue.pop() for _ in idle])
                slot[idle] = lanes
                for name, v in out.items():
                    state[name][idle] = v[lanes]
            busy = slot >= 0
            if not busy.any():
                break
            steps = int(min(CHUNK, maxiter - int(state["it"][busy].min())))
            idx = np.where(busy, slot, slot[busy][0])
            lane_args = [
                jnp.asarray(a[idx], dtype) if sh is None else sh
                for a, sh in zip(np_args, shared, strict=True)
            ]
            new = run({k: jnp.asarray(v) for k, v in state.items()}, jlo, jhi, max(steps, 1), *lane_args)
            state = {k: np.array(v) for k, v in new.items()}
            finished = busy & (state["done"] | (state["it"] >= maxiter))
            for name, v in state.items():
                out[name][slot[busy]] = v[busy]
            slot[finished] = -1
            state["done"][finished] = True
    x, g = out["x"].astype(np.float64), out["g"].astype(np.float64)
    pg = np.max(np.abs(np.clip(x - g, lo, hi) - x), axis=-1)
    f = np.where(np.isfinite(out["f"]), out["f"], np.inf)
    return Solution(x=x, f=f.astype(np.float64), grad_norm=pg, iterations=out["it"], converged=out["conv"])
