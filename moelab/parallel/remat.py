"""Rematerialisation (gradient checkpointing) policies, by name.

``none``: keep every intermediate for the backward pass (fastest, most memory).
``minimal``: keep matrix-product outputs, recompute element-wise work (norms, activations, softmax):
``jax.checkpoint_policies.dots_with_no_batch_dims_saveable`` (as MaxText's ``minimal`` policy).
``full``: keep only each layer's input and recompute the layer in the backward pass
(``jax.checkpoint_policies.nothing_saveable``; Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost"): about one extra forward pass, i.e. 8/6 of the training FLOPs.

The planner's activation model (``moelab.parallel.planner.activation_bytes_per_token_layer``) uses the same
names. ``checkpoint(fn, policy)`` wraps a per-layer function; ``none`` returns it unchanged.

The policy reaches the model through its hook, so that the model stays free of parallelism options: the
train step traces the model inside ``use_remat(name)``, and the model wraps its per-layer (scanned) body with
``moelab.model.hooks.layer_checkpoint(body)``, which applies the installed policy (none by default).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import jax

from moelab.errors import ConfigError
from moelab.model import hooks

POLICIES = ("none", "minimal", "full")


def check_policy(name: str) -> str:
    """``name`` when it is one of ``POLICIES``, else a one-line ConfigError listing them."""
    if name not in POLICIES:
        raise ConfigError(f"remat must be one of {'|'.join(POLICIES)}, got {name!r}")
    return name


def jax_policy(name: str):
    """The ``jax.checkpoint`` policy of ``name`` (None for ``none``)."""
    check_policy(name)
    return {
        "none": None,
        "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "full": jax.checkpoint_policies.nothing_saveable,
    }[name]


def checkpoint(fn: Callable, name: str) -> Callable:
    """``jax.checkpoint(fn, policy=...)`` for a remat policy name; the identity for ``none``."""
    policy = jax_policy(name)
    if name == "none":
        return fn
    return jax.checkpoint(fn, policy=policy, prevent_cse=True)


@contextlib.contextmanager
def use_remat(name: str) -> Iterator[None]:
    """Within this context the model's ``layer_checkpoint(body)`` hook applies policy ``name``."""
    check_policy(name)
    with hooks.layer_remat(None if name == "none" else lambda body: checkpoint(body, name)):
        yield
