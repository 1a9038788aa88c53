"""The slow, obvious reference: decide every assignment with a Python loop, then run each token through its
experts assignment by assignment. Ground truth for the tests of every dispatch strategy (outputs and
gradients).

The routing plan is recomputed here independently of capacity.py (plain loops over NumPy arrays); only the
random slot priorities of ``recycle`` are drawn with the same function, so both see the same draw.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moelab.model.dispatch.capacity import capacity_of, slot_priorities
from moelab.model.layers import swiglu


def reference_plan(top_idx, n_experts, capacity, overflow, key):
    """[(token, choice, expert)] of the assignments that are served, plus (n_dropped, n_recycled)."""
    idx = np.asarray(top_idx)
    n, k = idx.shape
    count = [0] * n_experts
    served, overflowed = [], []
    for t in range(n):  # token by token, each token's choices best first
        for j in range(k):
            e = int(idx[t, j])
            if capacity is None or count[e] < capacity:
                count[e] += 1
                served.append((t, j, e))
            else:
                overflowed.append((t, j))
    recycled = 0
    if overflow == "recycle" and overflowed:
        prio = np.asarray(slot_priorities(jax.random.key(0) if key is None else key, n_experts, capacity))
        free = [(prio[e * capacity + c], e) for e in range(n_experts) for c in range(count[e], capacity)]
        free.sort(key=lambda s: s[0])
        for (t, j), (_, e) in zip(overflowed, free, strict=False):
            served.append((t, j, e))
            recycled += 1
    return served, len(overflowed) - recycled, recycled


def dispatch(
    x,
    top_idx,
    top_w,
    w_gate,
    w_up,
    w_down,
    *,
    capacity_factor,
    overflow,
    key=None,
    dropless=False,
    probs=None,
):
    """``probs`` [N, E]: weight a recycled assignment by the router probability of the expert it lands on."""
    n, k = top_idx.shape
    n_experts = w_gate.shape[0]
    cap = None if dropless else capacity_of(n, k, n_experts, capacity_factor)
    served, n_dropped, n_recycled = reference_plan(top_idx, n_experts, cap, overflow, key)
    if not served:
        return jnp.zeros_like(x), n_dropped / (n * k), n_recycled / (n * k)
    idx = np.asarray(top_idx)
    gates = []
    for t_, j_, e_ in served:  # the gate of each served assignment
        landed_elsewhere = e_ != int(idx[t_, j_])
        gates.append(probs[t_, e_] if probs is not None and landed_elsewhere else top_w[t_, j_])
    t, e = (jnp.array([s[i] for s in served], dtype=jnp.int32) for i in (0, 2))
    gate = jnp.stack(gates).astype(x.dtype)
    return _combine(x, gate, w_gate, w_up, w_down, t, e), n_dropped / (n * k), n_recycled / (n * k)


@jax.jit
def _combine(x, gate, w_gate, w_up, w_down, t, e):
    """One row per served assignment a: ``y[t_a] += gate_a * SwiGLU_{e_a}(x[t_a])``."""
    rows = jax.vmap(swiglu)(x[t], w_gate[e], w_up[e], w_down[e]) * gate[:, None]
    return jnp.zeros_like(x).at[t].add(rows)
