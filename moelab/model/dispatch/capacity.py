"""Capacity dispatch: per-expert buffers [E, C, d], batched einsums, overflow dropped or recycled.

Assignments are numbered token-major (a = n·k + j) and the MoE layer hands tokens over position-major
(n = t·B + b), so an expert's slots go to earlier positions first: whether a token is dropped never depends
on later positions, and a model with ``drop`` stays causal (GShard's choice-major order would let a future
token's first choice evict an earlier token's second). ``recycle`` fills the room left after the first
pass, which does depend on the whole batch.
Expert e keeps its first ``C = ceil(capacity_factor · N · k / E)`` assignments (position from a cumulative sum
of one-hots). Overflow:

- ``drop``: the assignment contributes nothing (the residual stream carries the token on);
- ``recycle`` (Hunyuan-Large, arXiv 2411.02265 sec. 2.2): dropped assignments, in assignment order, take
  the free slots of experts below capacity in a random order drawn from ``key`` (uniform over free slots,
  hence experts with more room are likelier). Given the router probabilities ``probs`` [N, E], a recycled
  assignment's gate is the probability of the expert it lands on (Tencent's released ``top1gating``
  multiplies the softmax by the final dispatch mask); without them it keeps the overflowed expert's weight.
  The draw is reproducible from the key; only assignments beyond the total free room are still dropped.

The buffers are filled with a gather (slot -> token) and read back with a gather (assignment -> slot).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from moelab.model.hooks import constrain

# Logical names of the per-expert buffers: on a mesh, experts over the expert axis and each expert's slots
# over the remaining batch axes (moelab.parallel.rules); the token exchange into and out of them is an
# all-to-all.
BUFFER_AXES = ("experts", "expert_tokens", "embed")


def capacity_of(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor · N · k / E), at least 1 and at most N · k."""
    return int(min(n_tokens * top_k, max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))))


def slot_priorities(key: jax.Array, n_experts: int, capacity: int) -> jax.Array:
    """Random order in which recycled assignments take free slots: uniform [E * C] (lower first)."""
    return jax.random.uniform(key, (n_experts * capacity,))


def plan(top_idx: jax.Array, n_experts: int, capacity: int, overflow: str, key: jax.Array | None):
    """Slots of the N·k assignments (token-major): (expert [A], position [A], kept [A], recycled [A])."""
    n, k = top_idx.shape
    a = n * k
    expert = top_idx.reshape(a)
    onehot = jax.nn.one_hot(expert, n_experts, dtype=jnp.int32)
    pos = jnp.sum(jnp.cumsum(onehot, axis=0) * onehot, axis=-1) - 1
    kept = pos < capacity
    recycled = jnp.zeros_like(kept)
    if overflow == "recycle":
        if key is None:
            key = jax.random.key(0)
        filled = jnp.minimum(jnp.sum(onehot, axis=0), capacity)  # [E]
        free = (jnp.arange(capacity)[None, :] >= filled[:, None]).reshape(-1)  # [E * C]
        order = jnp.argsort(jnp.where(free, slot_priorities(key, n_experts, capacity), 2.0))
        dropped = ~kept
        rank = jnp.cumsum(dropped) - 1
        recycled = dropped & (rank < jnp.sum(free))
        slot = order[jnp.clip(rank, 0, n_experts * capacity - 1)]
        expert = jnp.where(recycled, slot // capacity, expert)
        pos = jnp.where(recycled, slot % capacity, pos)
        kept = kept | recycled
    elif overflow != "drop":
        raise ValueError(f"overflow must be drop|recycle, got {overflow!r}")
    return expert, pos, kept, recycled


def dispatch(x, top_idx, top_w, w_gate, w_up, w_down, *, capacity_factor, overflow, key=None, probs=None):
    n, d = x.shape
    k = top_idx.shape[1]
    n_experts = w_gate.shape[0]
    cap = capacity_of(n, k, n_experts, capacity_factor)
    expert, pos, kept, recycled = plan(top_idx, n_experts, cap, overflow, key)
    n_slots = n_experts * cap
    slot = jnp.where(kept, expert * cap + pos, n_slots)  # [A]; n_slots = nowhere
    token = jnp.arange(n * k) // k
    slot_token = jnp.full((n_slots,), n, jnp.int32).at[slot].set(token, mode="drop")
    x_pad = jnp.concatenate([x, jnp.zeros((1, d), x.dtype)])
    with jax.named_scope("expert_buffers"):  # names the expert-parallel part in profiles and compiled HLO
        buf = constrain(x_pad[slot_token].reshape(n_experts, cap, d), BUFFER_AXES)
        h = jax.nn.silu(jnp.einsum("ecd,edf->ecf", buf, w_gate)) * jnp.einsum("ecd,edf->ecf", buf, w_up)
        out = constrain(jnp.einsum("ecf,efd->ecd", h, w_down), BUFFER_AXES).reshape(n_slots, d)
    out_pad = jnp.concatenate([out, jnp.zeros((1, d), out.dtype)])
    weights = top_w.reshape(n * k)
    if probs is not None:  # a recycled assignment is weighted by the router probability where it lands
        weights = jnp.where(recycled, probs[token, expert], weights)
    weights = weights.astype(x.dtype)
    y = (out_pad[slot] * weights[:, None]).reshape(n, k, d).sum(1)
    dropped_frac = 1.0 - jnp.mean(kept.astype(jnp.float32))
    return y, dropped_frac, jnp.mean(recycled.astype(jnp.float32))
