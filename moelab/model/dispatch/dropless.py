"""Dropless dispatch: sort assignments by expert and run grouped matmuls with ``jax.lax.ragged_dot``.

No capacity, nothing dropped (MegaBlocks, Gale et al. 2022). On GPU/TPU ``ragged_dot`` is a grouped GEMM;
on CPU XLA lowers it to a dense masked product (about 15x slower than the capacity einsum,
../shared/DESIGN.md), so the CPU default is ``capacity``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dispatch(x, top_idx, top_w, w_gate, w_up, w_down, *, capacity_factor=None, overflow=None, key=None):
    del capacity_factor, overflow, key  # dropless: no capacity, no overflow
    n, d = x.shape
    k = top_idx.shape[1]
    n_experts = w_gate.shape[0]
    expert = top_idx.reshape(n * k)
    order = jnp.argsort(expert, stable=True)
    token = (jnp.arange(n * k) // k)[order]
    weights = top_w.reshape(n * k)[order].astype(x.dtype)
    group_sizes = jnp.bincount(expert, length=n_experts).astype(jnp.int32)
    xs = x[token]
    h = jax.nn.silu(jax.lax.ragged_dot(xs, w_gate, group_sizes)) * jax.lax.ragged_dot(xs, w_up, group_sizes)
    out = jax.lax.ragged_dot(h, w_down, group_sizes)
    y = jnp.zeros((n, d), out.dtype).at[token].add(out * weights[:, None])
    zero = jnp.zeros((), jnp.float32)
    return y, zero, zero
