"""The routing shared by the dropless strategies: sort the N·k assignments by expert, run a grouped FFN on the
sorted rows, weight each output by its gate and add it back to its token."""

from __future__ import annotations

import jax.numpy as jnp


def through_sorted_groups(x, top_idx, top_w, n_experts: int, ffn):
    """``y[n] = sum_j top_w[n, j] * ffn(...)[row of (n, j)]``: the assignments sorted by expert (stable, so
    each expert's rows keep token order), ``ffn(xs [N·k, d], group_sizes [E]) -> [N·k, d]`` on the sorted
    rows (expert e owns ``group_sizes[e]`` contiguous rows). Returns (y [N, d], dropped 0, recycled 0)."""
    n, d = x.shape
    k = top_idx.shape[1]
    expert = top_idx.reshape(n * k)
    order = jnp.argsort(expert, stable=True)
    token = (order // k).astype(jnp.int32)
    group_sizes = jnp.bincount(expert, length=n_experts).astype(jnp.int32)
    out = ffn(x[token], group_sizes)
    weights = top_w.reshape(n * k)[order].astype(x.dtype)
    y = jnp.zeros((n, d), out.dtype).at[token].add(out * weights[:, None])
    zero = jnp.zeros((), jnp.float32)
    return y, zero, zero
