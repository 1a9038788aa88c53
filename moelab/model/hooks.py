"""The two hooks through which a run's parallelism reaches the model, by logical names only.

The model knows logical axis names (``batch``, ``seq``, ``embed``, ``experts``, ``expert_tokens``, ...;
docs/architecture.md) and nothing about meshes. It calls

- ``constrain(x, names)`` where an activation's layout decides the communication pattern: the embedding output
  ``("batch", "seq", "embed")`` and a MoE layer's dispatch buffer ``("experts", "expert_tokens", "embed")``
  (batch-sharded tokens become expert-sharded slots: XLA exchanges them by all-to-all);
- ``layer_checkpoint(body)`` around its scanned per-layer body (rematerialisation).

Both are the identity unless a caller installs an implementation for the duration of a trace:
``moelab.parallel.rules.activation_sharding(mesh)`` installs ``with_sharding_constraint`` by the sharding
rules, ``moelab.parallel.remat.use_remat(name)`` a ``jax.checkpoint`` policy. This module imports nothing
of moelab, so ``moelab.model`` never imports ``moelab.parallel`` (the import contract holds it).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence

from jax import Array

Constraint = Callable[[Array, tuple[str | None, ...]], Array]
Remat = Callable[[Callable], Callable]

_CONSTRAINT: contextvars.ContextVar[Constraint | None] = contextvars.ContextVar("constraint", default=None)
_REMAT: contextvars.ContextVar[Remat | None] = contextvars.ContextVar("remat", default=None)


def constrain(x: Array, names: Sequence[str | None]) -> Array:
    """Pin the layout of activation ``x`` (one logical name per axis); the identity when none is installed."""
    fn = _CONSTRAINT.get()
    return x if fn is None else fn(x, tuple(names))


def layer_checkpoint(body: Callable) -> Callable:
    """``body`` under the installed rematerialisation policy; ``body`` itself when none is installed."""
    wrap = _REMAT.get()
    return body if wrap is None else wrap(body)


def remat_installed() -> bool:
    """Whether ``layer_checkpoint`` wraps the layers in a rematerialisation policy here."""
    return _REMAT.get() is not None


@contextlib.contextmanager
def activation_constraint(fn: Constraint | None) -> Iterator[None]:
    """Within this context ``constrain(x, names)`` returns ``fn(x, names)``."""
    token = _CONSTRAINT.set(fn)
    try:
        yield
    finally:
        _CONSTRAINT.reset(token)


@contextlib.contextmanager
def layer_remat(wrap: Remat | None) -> Iterator[None]:
    """Within this context ``layer_checkpoint(body)`` returns ``wrap(body)``."""
    token = _REMAT.set(wrap)
    try:
        yield
    finally:
        _REMAT.reset(token)
