"""Rematerialisation (gradient checkpointing) policies, by name.

``none``: keep every intermediate for the backward pass (fastest, most memory).
``minimal``: keep matrix-product outputs, recompute element-wise work (norms, activations, softmax):
``jax.checkpoint_policies.dots_with_no_batch_dims_saveable`` (as MaxText's ``minimal`` policy).
``full``: keep only each layer's input and recompute the layer in the backward pass
(``jax.checkpoint_policies.nothing_saveable``; Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost"): about one extra forward pass, i.e. 8/6 of the training FLOPs.

The planner's activation model (``moelab.parallel.planner.activation_bytes_per_token_layer``) uses the same
names. ``checkpoint(fn, policy)`` wraps a per-layer function; ``none`` returns it unchanged.

The policy reaches the model through a context, so that the model stays free of parallelism options: the
sharded step traces the model inside ``use_remat(name)``, and the model wraps its per-layer (scanned) body
with ``layer_checkpoint(body)``, which applies the policy of the enclosing context (``none`` by default).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

from moelab.errors import ConfigError

POLICIES = ("none", "minimal", "full")


def jax_policy(name: str):
    """The ``jax.checkpoint`` policy of ``name`` (None for ``none``)."""
    import jax

    if name not in POLICIES:
        raise ConfigError(f"remat must be one of {'|'.join(POLICIES)}, got {name!r}")
    return {
        "none": None,
        "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "full": jax.checkpoint_policies.nothing_saveable,
    }[name]


def checkpoint(fn: Callable, name: str) -> Callable:
    """``jax.checkpoint(fn, policy=...)`` for a remat policy name; the identity for ``none``."""
    import jax

    policy = jax_policy(name)
    if name == "none":
        return fn
    return jax.checkpoint(fn, policy=policy, prevent_cse=True)


_CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("moelab_remat", default="none")


@contextlib.contextmanager
def use_remat(name: str) -> Iterator[None]:
    """Within this context ``layer_checkpoint`` applies policy ``name``."""
    jax_policy(name)  # validate
    token = _CURRENT.set(name)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def layer_checkpoint(fn: Callable) -> Callable:
    """``checkpoint(fn, <policy of the enclosing use_remat>)``: the hook for a model's per-layer body."""
    return checkpoint(fn, _CURRENT.get())
