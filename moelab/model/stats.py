"""``RouterStats``: what the feed-forward layers report about routing, one typed pytree.

A layer returns one ``RouterStats`` whose fields are per-layer values (scalars, ``load`` [n_experts]); the
transformer stacks them, so the model returns one ``RouterStats`` whose every field has a leading
``[n_layers]`` axis (layer ``l`` at index ``l``). Consumers reduce what they need (the train step takes
``aux_loss.mean()`` for the loss; a report may plot ``load`` per layer).

To add a statistic: add a field here (a float32 array with the layer axis first), fill it in ``MoE.__call__``
and in ``RouterStats.dense``; ``jax.tree`` functions, ``lax.scan`` and jit carry it with no other change.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RouterStats:
    """Router statistics of one layer (or, from the model, of every layer stacked on a leading axis)."""

    aux_loss: jax.Array  # load-balancing loss (Switch eq. 4, top-k as GShard); 1.0 at perfect balance
    z_loss: jax.Array  # router z-loss (ST-MoE eq. 5)
    load: jax.Array  # [n_experts] fraction of the routed assignments per expert, before capacity (sums to 1)
    dropped_frac: jax.Array  # fraction of assignments that found no expert slot (their token skips the FFN)
    recycled_frac: jax.Array  # fraction of assignments re-routed to a free slot (overflow="recycle")

    @classmethod
    def dense(cls) -> RouterStats:
        """A dense feed-forward layer: no router losses, its single 'expert' takes every token."""
        zero = jnp.zeros((), jnp.float32)
        return cls(aux_loss=zero, z_loss=zero, load=jnp.ones((1,), jnp.float32), dropped_frac=zero,
                   recycled_frac=zero)  # fmt: skip

    def replace(self, **changes) -> RouterStats:
        return dataclasses.replace(self, **changes)
