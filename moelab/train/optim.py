"""The optimiser: AdamW with clipping, a learning-rate schedule, no weight decay on norms and biases, and
Hunyuan-Large's expert-specific learning rate for routed experts.

``make_optimizer(train, labels)`` returns an ``optax`` chain:

    clip_by_global_norm -> scale_by_adam -> add_decayed_weights(mask=decay) -> scale(expert) -> x(-lr)

where ``labels`` is a pytree (same structure as the parameters) of ``ParamKind`` values. Scaling the AdamW
update of routed-expert parameters by ``expert_lr_scale`` is exactly running them at ``expert_lr_scale x lr``
(optax's decoupled weight decay is multiplied by the learning rate too). With ``expert_lr_scale: auto`` the
factor is a scalar in the optimiser state (``ExpertScaleState``, 1 at the start, checkpointed with the rest)
that the run loop sets from the measured noise scales (``set_expert_scale``).

Expert-specific learning rate (Hunyuan-Large, arXiv 2411.02265 sec. 2.2.4, after McCandlish et al. 2018, "An
Empirical Model of Large-Batch Training"): the optimal Adam learning rate at batch size B is

    eps_opt(B) = 2 * eps_max / (sqrt(B_noise / B) + sqrt(B / B_noise)),

and a routed expert sees about ``B * top_k / n_experts`` tokens of a batch of B. So routed experts should run
at ``eps_opt(B * top_k / n_experts) / eps_opt(B)`` times the shared rate: ``expert_lr_ratio``. The ratio is
below 1 when B <= B_noise (fewer tokens -> noisier gradient -> smaller step) and can exceed 1 when B is far
above B_noise; at B = B_noise and n_experts/top_k = 16 it is 2/(4 + 1/4) = 0.47; Hunyuan-Large quotes about
0.31 (B << B_noise gives sqrt(1/16) = 0.25 as the limit). The paper does not give B or B_noise; compute, don't
assume.
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moelab.train.config import ANNEALED


class ParamKind(enum.IntEnum):
    DECAY = 0  # matrices: weight decay, base learning rate
    NO_DECAY = 1  # norms, biases, any 1-D parameter
    EXPERT = 2  # routed experts: weight decay, expert_lr_scale x learning rate


def lr_schedule(train, total_steps: int) -> optax.Schedule:
    """Learning rate at each optimiser step (0-based) for ``train.schedule`` (see TrainConfig)."""
    peak = train.lr
    floor = train.lr * train.min_lr_ratio
    warmup = int(round(train.warmup_frac * total_steps))
    anneal = int(round(train.anneal_frac * total_steps)) if train.schedule in ANNEALED else 0

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        # linear warmup from peak/warmup at step 0 to peak at step warmup - 1
        warm = peak * jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
        if train.schedule == "constant":
            return warm
        if train.schedule == "cosine":
            span = max(total_steps - warmup - 1, 1)
            frac = jnp.clip((step - warmup) / span, 0.0, 1.0)
            cos = floor + 0.5 * (peak - floor) * (1.0 + jnp.cos(math.pi * frac))
            return jnp.where(step < warmup, warm, cos)
        # wsd: constant until the last `anneal` steps, then linear to `floor` at the final step;
        # hunyuan: the plateau is a cosine decay from the peak to sqrt(min_lr_ratio)·peak (the geometric
        # midpoint between peak and floor: the paper does not publish the level its gradual decay reaches)
        start = total_steps - anneal
        plateau = peak
        if train.schedule == "hunyuan":
            middle = peak * math.sqrt(train.min_lr_ratio)
            span = max(start - warmup - 1, 1)
            frac = jnp.clip((step - warmup) / span, 0.0, 1.0)
            plateau = middle + 0.5 * (peak - middle) * (1.0 + jnp.cos(math.pi * frac))
        from_level = plateau if train.schedule == "wsd" else peak * math.sqrt(train.min_lr_ratio)
        frac = jnp.clip((step - start + 1.0) / max(anneal, 1), 0.0, 1.0)
        decayed = from_level + (floor - from_level) * frac
        return jnp.where(step < warmup, warm, jnp.where(step >= start, decayed, plateau))

    return schedule


def eps_opt(batch_tokens: float, eps_max: float, b_noise: float) -> float:
    """Optimal Adam learning rate at batch size B (Hunyuan-Large eq. in sec. 2.2.4; McCandlish et al.
    2018)."""
    return 2.0 * eps_max / (math.sqrt(b_noise / batch_tokens) + math.sqrt(batch_tokens / b_noise))


def expert_lr_ratio(batch_tokens: float, b_noise: float, n_experts: int, top_k: int = 1) -> float:
    """eps_opt(B * top_k / n_experts) / eps_opt(B): the routed experts' rate relative to the shared one."""
    return eps_opt(batch_tokens * top_k / n_experts, 1.0, b_noise) / eps_opt(batch_tokens, 1.0, b_noise)


def make_optimizer(train, labels, learning_rate=None) -> optax.GradientTransformation:
    """AdamW as ``clip -> scale_by_adam -> add_decayed_weights(mask) -> expert scale -> x(-learning_rate)``.

    This is ``optax.adamw`` term for term. With ``learning_rate=None`` the chain ends in ``x(-1)`` and the
    caller multiplies by the step's learning rate: the train step takes the rate as an argument, so one
    compiled step serves every learning rate, schedule and budget (the persistent compilation cache then hits
    across a sweep's trials of the same model shape).
    """
    decay_mask = jax.tree.map(lambda k: k != ParamKind.NO_DECAY, labels)
    parts = [
        optax.clip_by_global_norm(train.grad_clip),
        optax.scale_by_adam(b1=train.beta1, b2=train.beta2, eps=train.eps),
        optax.add_decayed_weights(train.weight_decay, mask=decay_mask),
    ]
    if train.expert_lr_scale == "auto":
        parts.append(_expert_scale_from_state(labels))
    elif train.expert_lr_scale != 1.0:
        scales = jax.tree.map(lambda k: train.expert_lr_scale if k == ParamKind.EXPERT else 1.0, labels)
        parts.append(_scale_tree(scales))
    parts.append(optax.scale(-1.0) if learning_rate is None else optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


class ExpertScaleState(NamedTuple):
    """The routed experts' learning-rate factor of ``expert_lr_scale: auto`` (a float32 scalar)."""

    scale: jax.Array


def _expert_scale_from_state(labels) -> optax.GradientTransformation:
    """Multiply the updates of routed-expert leaves by the scalar held in the state."""

    def init(params):
        del params
        return ExpertScaleState(jnp.ones((), jnp.float32))

    def update(updates, state, params=None):
        del params
        def one(u, kind):
            return u * state.scale.astype(u.dtype) if kind == ParamKind.EXPERT else u

        return jax.tree.map(one, updates, labels), state

    return optax.GradientTransformation(init, update)


def _is_scale_state(x) -> bool:
    return isinstance(x, ExpertScaleState)


def get_expert_scale(opt_state) -> float | None:
    """The auto expert scale held in ``opt_state`` (None when the optimiser has none)."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_scale_state) if _is_scale_state(x)]
    return float(found[0].scale) if found else None


def set_expert_scale(opt_state, value: float):
    """``opt_state`` with its auto expert scale set to ``value``, placed as the old one was: committed to its
    sharding when the old one was (filled by every process on a mesh), else not, so the jitted step sees the
    same argument placement and does not compile again."""

    def put(x):
        if not _is_scale_state(x):
            return x
        host = np.asarray(value, np.float32)
        if not x.scale.committed:
            return ExpertScaleState(jnp.asarray(host))
        return ExpertScaleState(jax.make_array_from_callback((), x.scale.sharding, lambda index: host[index]))

    return jax.tree.map(put, opt_state, is_leaf=_is_scale_state)


def _scale_tree(scales) -> optax.GradientTransformation:
    """Multiply each update leaf by a fixed per-leaf factor."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(init, update)
