"""Token-choice top-k routers in float32: softmax or sigmoid scores, an optional selection bias, and the
balance losses of Switch, GShard and DeepSeek-V3.

- Scores (computed in float32 whatever the model dtype; Fedus et al. 2021, "selective precision"):
  ``softmax`` (Switch, GShard, Mixtral, Hunyuan-Large) ``p = softmax(x W)``; ``sigmoid`` (DeepSeek-V3, 2024,
  eq. 15) ``s = sigmoid(x W)``, one independent affinity per expert.
- Choice: each token keeps the ``top_k`` experts of ``score + bias``. The bias (auxiliary-loss-free balancing,
  DeepSeek-V3 sec. 2.1.2) only changes *which* experts are chosen, never the gate weights; it is not a
  parameter: :func:`update_bias` moves it after each step by ``±rate`` against the expert's load.
- Gate weights: softmax keeps the raw probabilities of the chosen experts (Switch, Hunyuan-Large) or, with
  ``renormalize``, divides them by their sum (Mixtral); sigmoid always divides the chosen scores by their sum
  (DeepSeek-V3 eq. 13). With one chosen expert normalised weights are exactly 1 and the router learns only
  through the balance losses (as in DeepSeek-V3, which chooses 8).
- Load-balancing loss (Switch Transformer, Fedus et al. 2021, eq. 4, extended to top-k as in GShard):
  ``aux = E * sum_e f_e * P_e``, ``f_e`` the fraction of the N·k assignments sent to expert e (before any
  capacity limit), ``P_e`` the mean over tokens of the normalised score (softmax probabilities, or sigmoid
  scores divided by their sum over experts); 1.0 at perfect balance.
- Sequence-wise balance loss (DeepSeek-V3 eqs. 17-20): the same product computed within each sequence, then
  averaged over sequences (it keeps any one sequence from piling onto a few experts).
- z-loss (ST-MoE, Zoph et al. 2022, eq. 5): ``mean_n logsumexp(logits_n)^2``.

Tokens arrive position-major (``n = t * n_seqs + b``, see ``moelab.model.moe``), which is how the
sequence-wise loss finds each sequence's tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moelab.config import ROUTER_SCORES


class Routing(NamedTuple):
    top_w: jax.Array  # [N, k] float32 gate weights
    top_idx: jax.Array  # [N, k] int32 experts, best first (by score + bias)
    aux_loss: jax.Array  # scalar: Switch/GShard load-balancing loss
    z_loss: jax.Array  # scalar
    load: jax.Array  # [E] fraction of routed assignments per expert (sums to 1)
    probs: jax.Array  # [N, E] float32 scores (softmax probabilities or sigmoid scores): a recycled gate
    seq_aux_loss: jax.Array  # scalar: DeepSeek-V3's sequence-wise balance loss (0 without n_seqs)


class RouterBias(nnx.Variable):
    """The per-expert selection bias of auxiliary-loss-free balancing: model state, not a parameter.

    ``nnx.split(model, nnx.Param, ...)`` leaves it out of the parameters, so no gradient is taken for it and
    no optimiser sees it; the train step replaces it with :func:`update_bias` after each step, and it is
    saved with the rest of the model state.
    """


def scores(logits: jax.Array, kind: str) -> tuple[jax.Array, jax.Array]:
    """(scores used for the choice and the gate weights, normalised scores for the balance losses)."""
    if kind == "softmax":
        p = jax.nn.softmax(logits, axis=-1)
        return p, p
    if kind == "sigmoid":
        s = jax.nn.sigmoid(logits)
        return s, s / jnp.sum(s, axis=-1, keepdims=True)
    raise ValueError(f"router score must be one of {'|'.join(ROUTER_SCORES)}, got {kind!r}")


def balance_loss(onehot: jax.Array, probs: jax.Array) -> jax.Array:
    """E * sum_e f_e P_e for assignment one-hots [..., N, k, E] and normalised scores [..., N, E], averaged
    over leading axes; f (the choice) carries no gradient."""
    n_experts = probs.shape[-1]
    k = onehot.shape[-2]
    f = jnp.mean(onehot.sum(-2), axis=-2) / k  # [..., E]
    per = n_experts * jnp.sum(jax.lax.stop_gradient(f) * jnp.mean(probs, axis=-2), axis=-1)
    return jnp.mean(per)


def route(
    x: jax.Array,
    w_router: jax.Array,
    top_k: int,
    renormalize: bool,
    *,
    score: str = "softmax",
    bias: jax.Array | None = None,
    n_seqs: int | None = None,
) -> Routing:
    """x [N, d] (any dtype), w_router [d, E] -> Routing (all float32).

    ``bias`` [E] is added to the scores for the choice only; ``n_seqs`` (tokens position-major, N = T *
    n_seqs) enables the sequence-wise balance loss."""
    n_experts = w_router.shape[-1]
    logits = x.astype(jnp.float32) @ w_router.astype(jnp.float32)
    s, probs = scores(logits, score)
    choice = s if bias is None else s + jax.lax.stop_gradient(bias.astype(jnp.float32))
    _, top_idx = jax.lax.top_k(choice, top_k)
    top_w = jnp.take_along_axis(s, top_idx, axis=-1)
    if renormalize or score == "sigmoid":
        top_w = top_w / jnp.sum(top_w, axis=-1, keepdims=True)
    onehot = jax.nn.one_hot(top_idx, n_experts, dtype=jnp.float32)  # [N, k, E]
    load = jnp.mean(onehot.sum(1), axis=0) / top_k
    aux = balance_loss(onehot, probs)
    z = z_loss(logits)
    if n_seqs:
        n = x.shape[0]
        seq = balance_loss(
            onehot.reshape(n // n_seqs, n_seqs, top_k, n_experts).transpose(1, 0, 2, 3),
            probs.reshape(n // n_seqs, n_seqs, n_experts).transpose(1, 0, 2),
        )
    else:
        seq = jnp.zeros((), jnp.float32)
    return Routing(top_w, top_idx.astype(jnp.int32), aux, z, load, s, seq)


def update_bias_state(rest, load: jax.Array, rate: float, cla_share: int):
    """The model state ``rest`` (``nnx.split(model, nnx.Param, ...)``'s third part) with every ``RouterBias``
    moved one step by :func:`update_bias` against the step's ``load`` [n_layers, E] (the model's
    ``RouterStats.load``). Layer l of the transformer is row ``l // cla_share`` of the stacked state of
    ``blocks/layer_{l % cla_share}`` (moelab/model/transformer.py)."""
    per_block = load.reshape(-1, cla_share, load.shape[-1])  # [n_blocks, cla_share, E]

    def step(path, value):
        keys = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        if "router_bias" not in keys:
            return value
        sub = next(int(k[len("layer_") :]) for k in keys if k.startswith("layer_"))
        return update_bias(value, per_block[:, sub], rate)

    return jax.tree_util.tree_map_with_path(step, rest)


def z_loss(logits: jax.Array) -> jax.Array:
    """ST-MoE's router z-loss: the mean over tokens of logsumexp(logits)^2."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))


def update_bias(bias: jax.Array, load: jax.Array, rate: float) -> jax.Array:
    """One step of auxiliary-loss-free balancing (DeepSeek-V3 sec. 2.1.2): ``b_e - rate`` for an expert whose
    load is above the mean load of its layer, ``b_e + rate`` below it, unchanged at the mean.

    ``bias`` and ``load`` are [..., E] (any leading layer axes); ``load`` is the step's fraction of
    assignments per expert before any capacity limit."""
    load = jax.lax.stop_gradient(load.astype(jnp.float32))
    return bias + rate * jnp.sign(jnp.mean(load, axis=-1, keepdims=True) - load)
