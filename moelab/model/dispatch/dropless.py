"""Dropless dispatch: sort assignments by expert and run grouped matmuls with ``jax.lax.ragged_dot``.

No capacity, nothing dropped (MegaBlocks, Gale et al. 2022). On GPU/TPU ``ragged_dot`` is a grouped GEMM;
on CPU XLA lowers it to a dense masked product (about 15x slower than the capacity einsum,
../shared/DESIGN.md), so the CPU default is ``capacity``.
"""

from __future__ import annotations

import jax

from moelab.model.dispatch.sorted import through_sorted_groups


def dispatch(x, top_idx, top_w, w_gate, w_up, w_down, *, capacity_factor=None, overflow=None, key=None):
    del capacity_factor, overflow, key  # dropless: no capacity, no overflow

    def ffn(xs, sizes):
        h = jax.nn.silu(jax.lax.ragged_dot(xs, w_gate, sizes)) * jax.lax.ragged_dot(xs, w_up, sizes)
        return jax.lax.ragged_dot(h, w_down, sizes)

    return through_sorted_groups(x, top_idx, top_w, w_gate.shape[0], ffn)
