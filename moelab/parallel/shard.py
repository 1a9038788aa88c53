"""Shardings of a Flax NNX model's state from the logical axis names its Variables carry.

The model (``moelab.model``) annotates every ``nnx.Param`` with logical axis names in its metadata (Flax's
``out_sharding`` / ``sharding_names`` key, or ``logical_axes``); ``moelab.parallel.rules`` turns them into
PartitionSpecs for a mesh. Variables without names (counters, caches) are replicated.

- ``state_shardings(state, mesh)``: a tree of NamedSharding with the structure of ``state`` (for jit and
  device_put).
- ``abstract_state(cfg)``: the model's state as ShapeDtypeStructs, built with ``nnx.eval_shape`` (no memory),
  so the full-size Hunyuan-Large can be inspected on a laptop.
- ``per_device_params(state, mesh)``: parameters held by one device under those shardings.
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from moelab.errors import ConfigError
from moelab.model import Transformer
from moelab.model.layers import is_variable, logical_axes
from moelab.parallel.rules import PARAM_RULES, Rules, spec_entries


def var_spec(var: nnx.Variable, mesh_sizes: dict[str, int], rules: Rules = PARAM_RULES) -> PartitionSpec:
    value = var.get_value()
    shape = tuple(getattr(value, "shape", ()))
    names = logical_axes(var)
    if names is None or not shape:
        return PartitionSpec()
    if len(names) != len(shape):
        raise ConfigError(f"a parameter of shape {shape} carries {len(names)} logical axes {names}")
    return PartitionSpec(*spec_entries(shape, names, mesh_sizes, rules))


def state_specs(state, mesh, rules: Rules = PARAM_RULES):
    """PartitionSpec tree (Variables replaced by their spec) for ``state`` on ``mesh``."""
    sizes = dict(mesh.shape)
    return jax.tree.map(lambda v: v.replace(var_spec(v, sizes, rules)), state, is_leaf=is_variable)


def state_shardings(state, mesh, rules: Rules = PARAM_RULES):
    """NamedSharding tree with the structure of ``state``."""
    sizes = dict(mesh.shape)
    return jax.tree.map(
        lambda v: v.replace(NamedSharding(mesh, var_spec(v, sizes, rules))), state, is_leaf=is_variable
    )


def abstract_state(cfg, seed: int = 0):
    """(graphdef, state) of ``Transformer(cfg)`` with ShapeDtypeStruct leaves: nothing is allocated."""
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
    return nnx.split(model)


def per_device_params(state, mesh, rules: Rules = PARAM_RULES, param_type=nnx.Param) -> int:
    """Parameters (``param_type`` Variables) one device holds: sum of ``NamedSharding.shard_shape`` sizes."""
    sizes = dict(mesh.shape)
    total = 0
    for var in jax.tree.leaves(state, is_leaf=is_variable):
        if not isinstance(var, param_type):
            continue
        value = var.get_value()
        sharding = NamedSharding(mesh, var_spec(var, sizes, rules))
        total += math.prod(sharding.shard_shape(tuple(value.shape)))
    return total
