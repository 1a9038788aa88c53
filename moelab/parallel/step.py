"""The sharded training step: the same loss and gradients as the unsharded one, on any mesh.

How the work is split (docs/parallel.md):

- Parameters are placed by their logical axis names (``moelab.parallel.rules.PARAM_RULES``): routed experts
  over ``expert``, heads/mlp/vocab over ``tensor``, the d_model dimension of every matrix over ``fsdp`` (and
  over ``expert`` for the dense weights): ZeRO-3 across the batch-like axes. Optimiser state follows the
  parameters.
- The batch [B, T+1] is split over ``data`` x ``fsdp`` x ``expert``.
- Expert parallelism is expressed with **sharding constraints** (GSPMD, Xu et al. 2021), not a hand-written
  ``shard_map`` all-to-all: the step is written for one device, jitted with the shardings above, and XLA's
  partitioner inserts the all-gathers, reduce-scatters and the token all-to-alls between the
  batch-sharded and the expert-sharded layouts. Model code may pin a layout with
  ``moelab.parallel.rules.constrain`` (active inside this step's trace). Why: every dispatch strategy of
  ``moelab.model.moe`` (capacity buffers, dropless grouped matmul) stays one readable single-device function,
  and the result equals the unsharded step by construction (the tests check it to 1e-5).

``loss_fn`` is the training objective of docs/architecture.md: cross-entropy + aux_loss_coef * aux_loss +
z_loss_coef * z_loss.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from moelab.parallel.remat import jax_policy, use_remat
from moelab.parallel.rules import ACTIVATION_RULES, activation_sharding, spec_entries
from moelab.parallel.shard import state_shardings


def _stat(stats: Any, name: str):
    value = stats.get(name) if isinstance(stats, dict) else getattr(stats, name)
    return jnp.asarray(value, jnp.float32)


def loss_fn(model, batch, router_key=None, aux_loss_coef: float = 0.0, z_loss_coef: float = 0.0):
    """(loss, (ce, aux, z)) on an int32 batch [B, T+1]: inputs ``[:, :-1]``, targets ``[:, 1:]``."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits, stats = model(inputs, router_key=router_key)
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    ce = jnp.mean(lse - picked)
    aux, z = _stat(stats, "aux_loss"), _stat(stats, "z_loss")
    return ce + aux_loss_coef * aux + z_loss_coef * z, (ce, aux, z)


def batch_sharding(mesh, batch_size: int) -> NamedSharding:
    """[B, T] token batches: B over data x fsdp x expert (the axes that divide it)."""
    entries = spec_entries((batch_size, 1), ("batch", "seq"), dict(mesh.shape), ACTIVATION_RULES)
    return NamedSharding(mesh, PartitionSpec(*entries))


@dataclass
class Sharded:
    """A model split for a mesh: graphdef, parameters and other state, each placed on its shardings."""

    graphdef: Any
    params: Any
    rest: Any
    param_shardings: Any
    rest_shardings: Any
    mesh: Any


def shard_model(model: nnx.Module, mesh) -> Sharded:
    """Split ``model`` into (graphdef, Params, everything else) and place each leaf by its logical names."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    p_sh, r_sh = state_shardings(params, mesh), state_shardings(rest, mesh)
    return Sharded(graphdef, jax.device_put(params, p_sh), jax.device_put(rest, r_sh), p_sh, r_sh, mesh)


def make_grad_fn(sharded: Sharded, *, aux_loss_coef: float, z_loss_coef: float, remat: str = "none"):
    """Jitted ``(params, rest, batch, router_key) -> (loss, (ce, aux, z), grads)`` with grads sharded like
    the parameters. Passing a model split without a mesh (``mesh=None``) gives the unsharded reference.
    ``remat`` is the policy the model's ``layer_checkpoint`` hook applies (``moelab.parallel.remat``)."""
    graphdef, mesh = sharded.graphdef, sharded.mesh
    jax_policy(remat)

    def f(params, rest, batch, router_key):
        def objective(p):
            model = nnx.merge(graphdef, p, rest)
            return loss_fn(model, batch, router_key, aux_loss_coef, z_loss_coef)

        layout = contextlib.nullcontext() if mesh is None else activation_sharding(mesh)
        with layout, use_remat(remat):
            (loss, parts), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return loss, parts, grads

    if mesh is None:
        return jax.jit(f)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(f, out_shardings=(replicated, (replicated,) * 3, sharded.param_shardings))


def make_train_step(sharded: Sharded, tx, *, aux_loss_coef: float, z_loss_coef: float, remat: str = "none"):
    """Jitted ``(params, rest, opt_state, batch, router_key) -> (params, opt_state, metrics)``.

    The optimiser state is created with ``init_opt_state`` so that its moments are sharded like the
    parameters; the update runs where the shards live (no gather of the optimiser state).
    """
    grad_fn = make_grad_fn(sharded, aux_loss_coef=aux_loss_coef, z_loss_coef=z_loss_coef, remat=remat)
    import optax

    def step(params, rest, opt_state, batch, router_key):
        loss, (ce, aux, z), grads = grad_fn(params, rest, batch, router_key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "ce": ce, "aux_loss": aux, "z_loss": z,
                   "grad_norm": optax.tree.norm(grads)}
        return params, opt_state, metrics

    if sharded.mesh is None:
        return jax.jit(step, donate_argnums=(0, 2))
    return jax.jit(step, out_shardings=(sharded.param_shardings, None, None), donate_argnums=(0, 2))


def init_opt_state(tx, sharded: Sharded):
    """``tx.init(params)`` with every parameter-shaped leaf (Adam's moments) sharded like its parameter and
    every other leaf (step counters) replicated (``optax.tree_utils.tree_map_params``)."""
    import optax

    if sharded.mesh is None:
        return jax.jit(tx.init)(sharded.params)
    replicated = NamedSharding(sharded.mesh, PartitionSpec())
    abstract = jax.eval_shape(tx.init, sharded.params)
    out_sh = optax.tree_utils.tree_map_params(
        tx, lambda _leaf, sh: sh, abstract, sharded.param_shardings,
        transform_non_params=lambda _leaf: replicated,
    )
    return jax.jit(tx.init, out_shardings=out_sh)(sharded.params)
