"""``RouterStats``: what the feed-forward layers report about routing, one typed pytree.

A layer returns one ``RouterStats`` whose fields are per-layer values (scalars, ``load`` [n_experts]); the
transformer stacks them, so the model returns one ``RouterStats`` whose every field has a leading
``[n_layers]`` axis (layer ``l`` at index ``l``). Consumers reduce what they need (the train step takes
``aux_loss.mean()`` for the loss; a report may plot ``load`` per layer).

``router_health`` turns the fields the loop gathers over a logging interval into the per-layer health the run
logs (metrics.jsonl ``router``, summary.json ``router_health``).

To add a statistic: add a field here (a float32 array with the layer axis first), fill it in ``MoE.__call__``
and in ``RouterStats.dense``; ``jax.tree`` functions, ``lax.scan`` and jit carry it with no other change.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RouterStats:
    """Router statistics of one layer (or, from the model, of every layer stacked on a leading axis)."""

    aux_loss: jax.Array  # load-balancing loss (Switch eq. 4, top-k as GShard); 1.0 at perfect balance
    z_loss: jax.Array  # router z-loss (ST-MoE eq. 5)
    load: jax.Array  # [n_experts] fraction of the routed assignments per expert, before capacity (sums to 1)
    dropped_frac: jax.Array  # fraction of assignments that found no expert slot (their token skips the FFN)
    recycled_frac: jax.Array  # fraction of assignments re-routed to a free slot (overflow="recycle")
    seq_aux_loss: jax.Array  # DeepSeek-V3's sequence-wise balance loss (0 unless seq_aux_loss_coef > 0)
    bias: jax.Array  # [n_experts] selection bias the router used (zeros without aux-loss-free balancing)

    @classmethod
    def dense(cls) -> RouterStats:
        """A dense feed-forward layer: no router losses, its single 'expert' takes every token."""
        zero = jnp.zeros((), jnp.float32)
        return cls(aux_loss=zero, z_loss=zero, load=jnp.ones((1,), jnp.float32), dropped_frac=zero,
                   recycled_frac=zero, seq_aux_loss=zero, bias=jnp.zeros((1,), jnp.float32))  # fmt: skip

    def replace(self, **changes) -> RouterStats:
        return dataclasses.replace(self, **changes)


def router_health(load, dropped_frac, recycled_frac, bias) -> dict[str, list]:
    """Per-layer router health from host arrays (load [L, E], dropped/recycled [L], bias [L, E]): load min,
    max and entropy (normalised by log E: 1 = every expert equally loaded, 0 = one expert takes all), the
    dropped and recycled fractions and the selection bias (rounded for the log)."""
    load = np.asarray(load, np.float64)
    p = load / np.maximum(load.sum(-1, keepdims=True), 1e-30)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    n_experts = load.shape[-1]
    entropy = entropy / np.log(n_experts) if n_experts > 1 else np.ones(len(load))
    return {
        "load_min": load.min(-1).round(6).tolist(),
        "load_max": load.max(-1).round(6).tolist(),
        "load_entropy": entropy.round(6).tolist(),
        "dropped_frac": np.asarray(dropped_frac, np.float64).round(6).tolist(),
        "recycled_frac": np.asarray(recycled_frac, np.float64).round(6).tolist(),
        "bias": np.asarray(bias, np.float64).round(6).tolist(),
    }
