"""Logical axis names -> mesh axes: the sharding rules of every parameter and activation.

Parameters carry logical axis names (docs/architecture.md): ``vocab``, ``embed``, ``heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``experts``, ``layers``, ``norm``. Activations use the same names plus ``batch``,
``seq`` and ``expert_tokens`` (the token slots of a per-expert dispatch buffer). A rule maps a name to an
ordered tuple of candidate mesh axes (``moelab.parallel.mesh.AXES``).

Parameters (``PARAM_RULES``)::

    logical      mesh axes           why
    vocab        tensor              vocabulary-parallel embedding and logits (Megatron)
    embed        fsdp, expert        ZeRO-3: dense weights sharded over every batch-like axis but data
    heads        tensor              attention heads split (Megatron)
    kv_heads     tensor              as heads (replicated when tensor does not divide n_kv_heads)
    head_dim     -                   never split
    mlp          tensor              feed-forward width split (column- then row-parallel)
    experts      expert              expert parallelism (GShard)
    layers       -                   a scanned layer stack stays whole on every chip
    norm         -                   norm scales are tiny and replicated

Activations (``ACTIVATION_RULES``)::

    batch        data, fsdp, expert  the batch is split over every axis but tensor
    seq          -                   (no sequence parallelism)
    embed        -                   the residual stream is replicated over tensor
    heads, kv_heads, mlp, vocab      tensor
    experts      expert              dispatch buffers [experts, expert_tokens, embed] after the all-to-all
    expert_tokens data, fsdp         the slots of one expert, split over the remaining batch axes

Resolution (``spec_for``): dimensions named ``experts`` are placed first, then the others in order; each takes
the candidate axes of its rule that are not used by another dimension, have size > 1 and keep the dimension
divisible (a dimension that no axis divides is replicated: e.g. 8 KV heads with tensor = 16). This is the
``logical_axis_rules`` idea of Flax/MaxText, with divisibility handled so that any config gets a valid
sharding. ``activation_sharding(mesh)`` installs the activation rules behind the model's ``constrain`` hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from moelab.errors import ConfigError
from moelab.model import hooks

Rules = Mapping[str, tuple[str, ...]]

PARAM_RULES: dict[str, tuple[str, ...]] = {
    "vocab": ("tensor",),
    "embed": ("fsdp", "expert"),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "experts": ("expert",),
    "layers": (),
    "norm": (),
}

ACTIVATION_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp", "expert"),
    "seq": (),
    "embed": (),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "experts": ("expert",),
    "expert_tokens": ("data", "fsdp"),
}


def spec_entries(
    shape: Sequence[int], names: Sequence[str | None], mesh_sizes: Mapping[str, int], rules: Rules
) -> tuple[Any, ...]:
    """PartitionSpec entries (None, an axis name or a tuple of them) of one array (see the module doc)."""
    if len(shape) != len(names):
        raise ConfigError(f"logical axes {tuple(names)} do not match an array of shape {tuple(shape)}")
    unknown = [n for n in names if n is not None and n not in rules]
    if unknown:
        raise ConfigError(f"unknown logical axis {unknown[0]!r}; allowed: {', '.join(sorted(rules))}")
    order = sorted(range(len(names)), key=lambda i: names[i] != "experts")
    used: set[str] = set()
    entries: list[Any] = [None] * len(names)
    for i in order:
        if names[i] is None:
            continue
        chosen: list[str] = []
        prod = 1
        for axis in rules[names[i]]:
            size = int(mesh_sizes.get(axis, 1))
            if axis in used or size == 1 or shape[i] % (prod * size):
                continue
            chosen.append(axis)
            prod *= size
        used.update(chosen)
        entries[i] = None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen)
    return tuple(entries)


def shards_of(entries: Sequence[Any], mesh_sizes: Mapping[str, int]) -> list[int]:
    """How many pieces each dimension is cut into under ``entries``."""
    out = []
    for e in entries:
        axes = () if e is None else (e,) if isinstance(e, str) else tuple(e)
        n = 1
        for a in axes:
            n *= int(mesh_sizes.get(a, 1))
        out.append(n)
    return out


def local_shape(
    shape: Sequence[int],
    names: Sequence[str | None],
    mesh_sizes: Mapping[str, int],
    rules: Rules = PARAM_RULES,
) -> tuple[int, ...]:
    """Shape of one device's shard (exact: the rules only pick axes that divide the dimension)."""
    entries = spec_entries(shape, names, mesh_sizes, rules)
    return tuple(d // n for d, n in zip(shape, shards_of(entries, mesh_sizes), strict=True))


def partition_spec(shape, names, mesh, rules: Rules = PARAM_RULES):
    """``jax.sharding.PartitionSpec`` of an array with logical ``names`` on ``mesh``."""
    return PartitionSpec(*spec_entries(shape, names, dict(mesh.shape), rules))


def named_sharding(shape, names, mesh, rules: Rules = PARAM_RULES):
    return NamedSharding(mesh, partition_spec(shape, names, mesh, rules))


# ---------------------------------------------------------------- activation constraints
@contextlib.contextmanager
def activation_sharding(mesh, rules: Rules = ACTIVATION_RULES) -> Iterator[None]:
    """Within this context (while tracing a jitted step) the model's hook
    ``moelab.model.hooks.constrain(x, names)`` pins ``x`` to ``mesh`` by ``rules``
    (``jax.lax.with_sharding_constraint``); outside it that hook is the identity, so single-device code is
    unchanged. The model calls it where the communication pattern is decided: the embedding output
    (batch-sharded) and a MoE layer's dispatch buffer ``("experts", "expert_tokens", "embed")``, which makes
    XLA exchange tokens between expert shards by all-to-all."""

    def pin(x, names):
        return jax.lax.with_sharding_constraint(x, named_sharding(x.shape, names, mesh, rules))

    with hooks.activation_constraint(pin):
        yield
