"""Token-choice top-k router in float32, with the Switch/GShard load-balancing loss and the router z-loss.

- Probabilities: ``softmax(x W_router)`` computed in float32 whatever the model dtype (Fedus et al. 2021,
  "selective precision"); each token keeps its ``top_k`` experts, with weights renormalised to sum to one
  when ``renormalize`` (Mixtral) or the raw probabilities (Switch, GShard, Hunyuan-Large).
- Load-balancing loss (Switch Transformer, Fedus et al. 2021, eq. 4, extended to top-k as in GShard):
  ``aux = n_experts * sum_e f_e * P_e`` with ``f_e`` the fraction of the N·k routed assignments sent to
  expert e (before any capacity limit) and ``P_e`` the mean router probability of e; 1.0 at perfect balance.
- z-loss (ST-MoE, Zoph et al. 2022, eq. 5): ``mean_n logsumexp(logits_n)^2``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Routing(NamedTuple):
    top_w: jax.Array  # [N, k] float32 gate weights
    top_idx: jax.Array  # [N, k] int32 experts, best first
    aux_loss: jax.Array  # scalar
    z_loss: jax.Array  # scalar
    load: jax.Array  # [E] fraction of routed assignments per expert (sums to 1)
    probs: jax.Array  # [N, E] float32 router probabilities (the gate of a recycled assignment)


def route(x: jax.Array, w_router: jax.Array, top_k: int, renormalize: bool) -> Routing:
    """x [N, d] (any dtype), w_router [d, E] -> Routing (all float32)."""
    n_experts = w_router.shape[-1]
    logits = x.astype(jnp.float32) @ w_router.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    top_w, top_idx = jax.lax.top_k(probs, top_k)
    if renormalize:
        top_w = top_w / jnp.sum(top_w, axis=-1, keepdims=True)
    load = jnp.mean(jax.nn.one_hot(top_idx, n_experts, dtype=jnp.float32).sum(1), axis=0) / top_k
    aux = n_experts * jnp.sum(jax.lax.stop_gradient(load) * jnp.mean(probs, axis=0))
    z = jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))
    return Routing(top_w, top_idx.astype(jnp.int32), aux, z, load, probs)
