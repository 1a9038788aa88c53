"""The jitted train and eval steps (pure functions of arrays; one compilation each per shape).

``loss = CE + aux_loss_coef * aux_loss + z_loss_coef * z_loss + seq_aux_loss_coef * seq_aux_loss`` with the
coefficients from ``ModelConfig`` (aux: load-balance loss, z: router z-loss, seq_aux: DeepSeek-V3's
sequence-wise balance loss, all returned by the model in its ``RouterStats``).

The train step is ``(params, opt_state, first_bad, rest, batch, step, lr, seed) -> (params, opt_state,
first_bad, rest, metrics)``: the state in is the state out, the first four arguments donated (updated in
place). ``rest`` is the model state that is not a parameter (``nnx.split(model, nnx.Param, ...)``): the
router biases of auxiliary-loss-free balancing, which no gradient or optimiser touches; the step moves them
after the update (``moelab.model.router.update_bias_state``) from the step's expert loads. A non-finite loss
or gradient norm leaves the parameters, optimiser state and router biases unchanged and records the step in
``first_bad`` (-1 while none), so the host need not look at the loss every step: the loop reads ``first_bad``
at its logging interval and stops the run as ``diverged`` at the exact step.

On a device mesh (``moelab train --mesh``) the same functions run: jit follows the shardings of the
arguments (parameters and optimiser state placed by ``moelab.parallel``, the batch split over the batch
axes), the model is traced inside ``moelab.parallel.rules.activation_sharding(mesh)`` and
``moelab.parallel.remat.use_remat`` (both contexts only matter while tracing), and ``state_shardings`` pins
the donated state's output shardings to its input shardings (so every step reuses one compilation) while
metrics come back replicated (readable by every process of a multi-host run).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from moelab.model.layers import is_variable, logical_axes
from moelab.model.router import update_bias_state
from moelab.parallel.remat import use_remat
from moelab.parallel.rules import activation_sharding
from moelab.train.optim import ParamKind


def _trace_context(mesh, remat: str) -> contextlib.ExitStack:
    """The contexts the model is traced in: activation layout constraints on ``mesh`` (none without one) and
    the remat policy of its scanned layer body."""
    stack = contextlib.ExitStack()
    if mesh is not None:
        stack.enter_context(activation_sharding(mesh))
    stack.enter_context(use_remat(remat))
    return stack


def _replicated(mesh):
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def param_kind(path: str, var) -> ParamKind:
    """Label of one parameter: routed experts by their logical ``experts`` axis together with ``mlp`` (the
    router is [embed, experts] and is not an expert), norms by their ``norm`` axis, any 1-D array (norm scale,
    bias) by shape. Falls back to the path when a parameter has no axis names."""
    names = logical_axes(var) or ()
    value = var.get_value() if hasattr(var, "get_value") else var.value
    lowered = path.lower()
    if "norm" in names or value.ndim < 2 or "norm" in lowered or "bias" in lowered:
        return ParamKind.NO_DECAY
    if names:
        is_expert = "experts" in names and "mlp" in names
    else:
        is_expert = "expert" in lowered and "shared" not in lowered and "router" not in lowered
    return ParamKind.EXPERT if is_expert else ParamKind.DECAY


def param_labels(params):
    """A pytree like ``params`` (same structure, leaf for leaf) of ``ParamKind`` values."""
    pairs, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_variable)
    labels = [param_kind(jax.tree_util.keystr(path), var) for path, var in pairs]
    return jax.tree.unflatten(jax.tree.structure(params), labels)


def cross_entropy_sum(logits, targets):
    """Sum over positions of -log softmax(logits)[target], in float32."""
    logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()


def make_loss_fn(graphdef, model_cfg, *, mesh=None, remat: str = "none"):
    """The training objective ``(params, rest, batch [B, T+1], router_key) -> (total, (ce, aux, z, stats))``:
    ``total = ce + aux_loss_coef * aux + z_loss_coef * z (+ seq_aux_loss_coef * seq_aux)`` with ``ce`` the
    mean cross-entropy of
    ``batch[:, 1:]`` given ``batch[:, :-1]``, ``aux``/``z`` the router losses averaged over layers and
    ``stats`` the model's per-layer ``RouterStats``. Traced under ``mesh``'s activation constraints and the
    ``remat`` policy."""
    aux_coef, z_coef = model_cfg.aux_loss_coef, model_cfg.z_loss_coef

    def loss_fn(params, rest, batch, key):
        model = nnx.merge(graphdef, params, rest)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with _trace_context(mesh, remat):
            logits, stats = model(inputs, router_key=key)
        ce = cross_entropy_sum(logits, targets) / targets.size
        aux, z = jnp.mean(stats.aux_loss), jnp.mean(stats.z_loss)
        total = ce + aux_coef * aux + z_coef * z
        if model_cfg.seq_aux_loss_coef > 0:
            total = total + model_cfg.seq_aux_loss_coef * jnp.mean(stats.seq_aux_loss)
        return total, (ce, aux, z, stats)

    return loss_fn


def make_train_step(graphdef, tx, model_cfg, *, mesh=None, remat: str = "none", state_shardings=None):
    """The jitted step. ``tx`` is ``make_optimizer(train, labels)`` without a learning rate: the step scales
    its updates by the ``lr`` argument and takes ``seed`` as an argument too, so neither is compiled in.

    ``mesh``/``remat``: trace the model under that mesh's activation constraints and remat policy.
    ``state_shardings``: (params, opt_state, first_bad, rest) shardings the outputs keep (None: XLA's
    choice)."""
    loss_fn = make_loss_fn(graphdef, model_cfg, mesh=mesh, remat=remat)

    def train_step(params, opt_state, first_bad, rest, batch, step, lr, seed):
        key = jax.random.fold_in(jax.random.key(seed + 1), step)
        (total, (ce, aux, z, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rest, batch, key
        )
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(total) & jnp.isfinite(grad_norm)

        def apply(args):
            params, opt_state = args
            updates, opt_state = tx.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
            return optax.apply_updates(params, updates), opt_state

        # one branch runs: a bad step costs nothing and leaves params and optimiser state as they were
        params, opt_state = jax.lax.cond(ok, apply, lambda args: args, (params, opt_state))
        first_bad = jnp.where((first_bad < 0) & ~ok, step, first_bad)
        if model_cfg.router_bias_rate > 0:  # outside the gradient, after the update, on a good step only
            moved = update_bias_state(rest, stats.load, model_cfg.router_bias_rate, model_cfg.cla_share)
            rest = jax.tree.map(lambda new, old: jnp.where(ok, new, old), moved, rest)
        metrics = {
            "loss": ce,
            "total_loss": total,
            "grad_norm": grad_norm,
            "aux_loss": aux,
            "z_loss": z,
            "lr": lr,
            "load": stats.load,  # [n_layers, n_experts]
            "dropped_frac": jnp.mean(stats.dropped_frac),
            "recycled_frac": jnp.mean(stats.recycled_frac),
            "router": stats,  # per layer: router health (moelab.model.stats.router_health)
        }
        return params, opt_state, first_bad, rest, metrics

    if state_shardings is None and mesh is None:
        return jax.jit(train_step, donate_argnums=(0, 1, 2, 3))
    given = tuple(state_shardings or ())
    out_shardings = (*given, *(None,) * (4 - len(given)), _replicated(mesh))  # rest not given: XLA's choice
    return jax.jit(train_step, donate_argnums=(0, 1, 2, 3), out_shardings=out_shardings)


def make_eval_step(graphdef, token_bytes, *, mesh=None):
    """(params, rest, batch) -> (sum of nats, sum of target bytes) over the batch (replicated on a mesh)."""
    token_bytes = np.asarray(token_bytes, np.float32)  # a constant of the trace (no device placement)

    def eval_step(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        with _trace_context(mesh, "none"):
            logits, _ = model(batch[:, :-1], router_key=None)
        targets = batch[:, 1:]
        return cross_entropy_sum(logits, targets), jnp.asarray(token_bytes)[targets].sum()

    if mesh is None:
        return jax.jit(eval_step)
    return jax.jit(eval_step, out_shardings=_replicated(mesh))
