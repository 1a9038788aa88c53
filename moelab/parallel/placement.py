"""Where a run's arrays live: ``Placement(None)`` on one device, ``Placement(mesh)`` on a device mesh.

The training loop and the step are written once; what differs between one device and a mesh is only where
arrays are created and put, and that is this object's job:

- ``init_model(make)``: (graphdef, params, rest) of the model ``make()`` builds. On a mesh the model is
  initialised by a jitted function whose outputs carry the logical-axis shardings
  (``moelab.parallel.shard.state_shardings`` of the abstract model), so no process ever holds the whole model.
- ``init_opt_state(tx, params)``: ``tx.init(params)`` with every parameter-shaped leaf (Adam's moments)
  sharded like its parameter and every other leaf (step counters) replicated
  (``optax.tree_utils.tree_map_params``).
- ``batch(tokens)``: a [B, T] host batch on the devices, B split over data x fsdp x expert
  (``batch_sharding``). In a multi-process run every process holds the same global batch (batches are a pure
  function of (seed, step)) and contributes the rows of its own devices (``jax.make_array_from_callback``).
- ``scalar(value)``: a replicated scalar (the step's ``first_bad``).
- ``shardings(tree)``: the shardings the jitted step pins its donated outputs to (None on one device).

Expert parallelism is expressed with sharding constraints (GSPMD, Xu et al. 2021), not a hand-written
``shard_map`` all-to-all: the step (``moelab.train.step``) is written for one device and jitted with the
shardings above, the model pins its activations by logical names (``moelab.model.hooks``), and XLA's
partitioner inserts the all-gathers, reduce-scatters and token all-to-alls (docs/parallel.md).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from moelab.parallel.rules import ACTIVATION_RULES, spec_entries
from moelab.parallel.shard import state_shardings


def batch_sharding(mesh, batch_size: int) -> NamedSharding:
    """[B, T] token batches: B over data x fsdp x expert (the axes that divide it)."""
    entries = spec_entries((batch_size, 1), ("batch", "seq"), dict(mesh.shape), ACTIVATION_RULES)
    return NamedSharding(mesh, PartitionSpec(*entries))


def global_array(host, sharding) -> jax.Array:
    """A global ``jax.Array`` with ``sharding`` from a host value every process holds in full: each process
    fills the shards of its own devices (``jax.make_array_from_callback``; works across processes)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class Placement:
    """One device (``mesh=None``) or a ``jax.sharding.Mesh`` with moelab's axes; see the module doc."""

    def __init__(self, mesh=None):
        self.mesh = mesh
        self.replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())

    @property
    def is_main(self) -> bool:
        """Process 0 of a multi-process run (the one that writes files); True on one host."""
        return jax.process_index() == 0

    def init_model(self, make: Callable[[], nnx.Module]):
        """(graphdef, params, rest) of ``make()`` split into ``nnx.Param`` and everything else."""
        if self.mesh is None:
            return nnx.split(make(), nnx.Param, ...)
        graphdef, abs_params, abs_rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
        out = (state_shardings(abs_params, self.mesh), state_shardings(abs_rest, self.mesh))
        params, rest = jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[1:], out_shardings=out)()
        return graphdef, params, rest

    def init_opt_state(self, tx, params):
        if self.mesh is None:
            return tx.init(params)
        abstract = jax.eval_shape(tx.init, params)
        out = optax.tree_utils.tree_map_params(
            tx, lambda _leaf, sh: sh, abstract, self.shardings(params),
            transform_non_params=lambda _leaf: self.replicated,
        )  # fmt: skip
        return jax.jit(tx.init, out_shardings=out)(params)

    def scalar(self, value) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(value)
        return global_array(value, self.replicated)

    def batch(self, tokens) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(tokens)
        return global_array(tokens, batch_sharding(self.mesh, np.shape(tokens)[0]))

    def shardings(self, tree):
        """The ``.sharding`` of every array leaf of ``tree`` (same structure); None on one device."""
        return None if self.mesh is None else jax.tree.map(lambda x: x.sharding, tree)
