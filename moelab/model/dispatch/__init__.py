"""Dispatch strategies: how routed tokens reach their experts and come back.

Every strategy is a function with the signature of ``moelab.model.dispatch.reference.dispatch``::

    dispatch(x[N, d], top_idx[N, k], top_w[N, k], w_gate[E, d, f], w_up[E, d, f], w_down[E, f, d], *,
             capacity_factor, overflow, key) -> (y[N, d], dropped_frac, recycled_frac)

``y[n] = sum_j top_w[n, j] * SwiGLU_{expert(n, j)}(x[n])`` over the assignments that were not dropped.

- ``capacity`` (capacity.py): per-expert buffers, one batched einsum per projection; drop or recycle overflow.
- ``dropless`` (dropless.py): sorted tokens and ``jax.lax.ragged_dot`` grouped matmuls (GPU/TPU).
- ``reference`` (reference.py): a slow per-token loop, the ground truth of the tests.
"""

from __future__ import annotations

from moelab.model.dispatch import capacity, dropless

STRATEGIES = {"capacity": capacity.dispatch, "dropless": dropless.dispatch}
