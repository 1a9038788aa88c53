"""Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"): each expert
picks the tokens it serves, instead of each token picking experts.

Scores ``S = score(x W_router)`` [N, E] (softmax over experts as in the paper, or sigmoid). Within a group
of G tokens each expert keeps the ``C`` tokens with the highest score for it, ``C = ceil(capacity_factor · G ·
k / E)`` (k = ``top_k``: the average number of experts per token; Zhou et al.'s capacity
factor c is ``capacity_factor · k`` here), and ``y_n = sum over the experts e that chose n of S[n, e] ·
SwiGLU_e(x_n)``. Every expert serves exactly C tokens (perfect balance by construction, no balance loss); a
token may be chosen by several experts or by none (it then skips the feed-forward layer: ``dropped_frac``).

Groups: the paper chooses over the whole batch, which for a language model lets a token's routing depend on
later positions of its own sequence. Here a group is one position across the batch (tokens arrive
position-major, ``n = t · n_seqs + b``), so no token's routing depends on a later position; it does depend on
the other sequences in the batch at the same position, and needs ``n_seqs · k / E`` of order one or more
(with one sequence every expert takes the only token).

The buffers are [E, groups · C, d] gathered from the groups, one batched einsum per projection, and the
weighted outputs scatter-added back: the layout of ``capacity.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moelab.model.dispatch.capacity import capacity_of


def choose(s: jax.Array, n_seqs: int, top_k: int, capacity_factor: float) -> tuple[jax.Array, jax.Array]:
    """Each expert's choice in each group: (token index within the group [T, E, C], its score [T, E, C])."""
    n, n_experts = s.shape
    groups = n // n_seqs
    cap = capacity_of(n_seqs, top_k, n_experts, capacity_factor)
    by_expert = s.reshape(groups, n_seqs, n_experts).transpose(0, 2, 1)  # [T, E, B]
    vals, idx = jax.lax.top_k(by_expert, cap)
    return idx, vals


def dispatch(x, s, w_gate, w_up, w_down, *, n_seqs, top_k, capacity_factor):
    """x [N, d] position-major, s [N, E] float32 scores -> (y [N, d], dropped_frac, load [E])."""
    n, d = x.shape
    n_experts = s.shape[-1]
    groups = n // n_seqs
    idx, vals = choose(s, n_seqs, top_k, capacity_factor)  # [T, E, C]
    token = (jnp.arange(groups)[:, None, None] * n_seqs + idx).transpose(1, 0, 2).reshape(n_experts, -1)
    buf = x[token]  # [E, T*C, d]
    h = jax.nn.silu(jnp.einsum("ecd,edf->ecf", buf, w_gate)) * jnp.einsum("ecd,edf->ecf", buf, w_up)
    out = jnp.einsum("ecf,efd->ecd", h, w_down)
    weights = vals.transpose(1, 0, 2).reshape(n_experts, -1).astype(x.dtype)
    y = jnp.zeros((n, d), out.dtype).at[token.reshape(-1)].add((out * weights[..., None]).reshape(-1, d))
    served = jnp.zeros((n,), jnp.int32).at[token.reshape(-1)].add(1)
    dropped_frac = jnp.mean((served == 0).astype(jnp.float32))
    load = jnp.full((n_experts,), 1.0 / n_experts, jnp.float32)  # every expert serves groups * C tokens
    return y, dropped_frac, load
