"""Dispatch strategies: how routed tokens reach their experts and come back.

Every strategy is a function with the signature of ``moelab.model.dispatch.reference.dispatch``::

    dispatch(x[N, d], top_idx[N, k], top_w[N, k], w_gate[E, d, f], w_up[E, d, f], w_down[E, f, d], *,
             capacity_factor, overflow, key) -> (y[N, d], dropped_frac, recycled_frac)

``y[n] = sum_j top_w[n, j] * SwiGLU_{expert(n, j)}(x[n])`` over the assignments that were not dropped.

- ``capacity`` (capacity.py): per-expert buffers, one batched einsum per projection; drop or recycle overflow.
- ``dropless`` (dropless.py): sorted tokens and ``jax.lax.ragged_dot`` grouped matmuls (GPU/TPU).
- ``blocksparse`` (blocksparse.py): sorted tokens, a grouped SwiGLU in blocks of b rows (MegaBlocks in plain
  XLA); dropless, the fast dropless path on CPU.
- ``auto``: the fastest dropless strategy for the backend, ``resolve("auto")``. Both candidates compute the
  same function (nothing dropped), so a run's numbers do not depend on which one was picked.
- ``reference`` (reference.py): a slow per-token loop, the ground truth of the tests.

The two dropless strategies share their routing (sort by expert, gather, gate-weighted scatter back):
``sorted.through_sorted_groups``, around a grouped FFN of their own.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from moelab.model.dispatch import blocksparse, capacity, dropless

STRATEGIES = {
    "capacity": capacity.dispatch,
    "dropless": dropless.dispatch,
    "blocksparse": blocksparse.dispatch,
}
DROPLESS = ("dropless", "blocksparse")


def resolve(name: str, backend: str | None = None) -> str:
    """The strategy ``name`` stands for on ``backend`` (default: JAX's default backend).

    ``auto`` -> ``dropless`` (``ragged_dot``) where the backend compiles ``ragged_dot`` to a grouped GEMM
    (``ragged_dot_is_grouped``; TPU, GPU builds with a grouped kernel), else ``blocksparse`` (CPU, where
    ragged_dot is a dense masked product over all experts). Any other name is returned as is.
    """
    if name != "auto":
        return name
    return "dropless" if ragged_dot_is_grouped(backend or jax.default_backend()) else "blocksparse"


@functools.cache
def ragged_dot_is_grouped(backend: str) -> bool:
    """Whether ``jax.lax.ragged_dot`` compiles to a grouped GEMM on ``backend``, read from the compiled
    program's own FLOP count: a dense fallback multiplies every row by every group's matrix (about E times the
    useful FLOPs; CPU XLA does this), a grouped kernel does each row once (an opaque custom call counts 0).
    A program without a cost analysis counts as not grouped (blocksparse is correct anywhere).
    """
    n_groups, m, k, n = 8, 512, 128, 128
    on = jax.sharding.SingleDeviceSharding(jax.devices(backend)[0])
    args = [
        jax.ShapeDtypeStruct(shape, dt, sharding=on)
        for shape, dt in (((m, k), jnp.float32), ((n_groups, k, n), jnp.float32), ((n_groups,), jnp.int32))
    ]
    compiled = jax.jit(jax.lax.ragged_dot).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    if not cost or "flops" not in cost:
        return False
    return float(cost["flops"]) < 2 * (2 * m * k * n)
