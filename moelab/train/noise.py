"""The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", app. A).

For a loss averaged over a batch of B examples the expected squared gradient norm is

    E |G_B|^2 = |G|^2 + tr(Sigma) / B

(G the true gradient, Sigma the per-example gradient covariance). Two batch sizes B_small < B_big give the
unbiased estimators

    |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

and the simple noise scale B_simple = tr(Sigma) / |G|^2, the batch size at which the gradient's noise and
signal are equal: McCandlish et al.'s estimate of the critical batch size, and the ``B_noise`` of
Hunyuan-Large's eps_opt(B) (``moelab.train.optim.eps_opt``). Each estimator is noisy on its own (a
difference of two noisy norms), so ``NoiseEMA`` smooths |G|^2 and tr(Sigma) separately with an exponential
moving average and takes the ratio of the smoothed values (McCandlish et al., app. A.1).

In moelab the two sizes are the two halves of a training batch (B_small = B/2, B_big = B, both in tokens, so
B_simple is in tokens): ``probe_sq_norms`` takes the gradient of each half, |G_small|^2 is the mean of the two
halves' squared norms and |G_big|^2 the squared norm of their mean, the full batch's gradient. The norms are
taken per parameter group (``GROUPS``): the whole model, the routed experts (``ParamKind.EXPERT``), and the
shared parameters, every other one (attention, embeddings, norms, router, shared experts: the parameters every
token passes through).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from moelab.train.optim import ParamKind, eps_opt

#: Parameter groups the noise scale is measured for.
GROUPS = ("all", "expert", "shared")


def unbiased_components(sq_small, sq_big, b_small: float, b_big: float):
    """(|G|^2, tr(Sigma)) from the squared gradient norms at batch sizes ``b_small`` < ``b_big``."""
    if not b_small < b_big:
        raise ValueError(f"b_small must be < b_big, got {b_small} and {b_big}")
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def group_masks(labels) -> dict[str, list[bool]]:
    """Per group, a flat list (``jax.tree.leaves`` order of ``labels``) of which leaves belong to it; a group
    with no leaf (``expert`` in a dense model) is left out."""
    kinds = jax.tree.leaves(labels)
    masks = {
        "all": [True] * len(kinds),
        "expert": [k == ParamKind.EXPERT for k in kinds],
        "shared": [k != ParamKind.EXPERT for k in kinds],
    }
    return {g: m for g, m in masks.items() if any(m)}


def group_sq_norms(grads, masks: dict[str, list[bool]]) -> dict[str, jax.Array]:
    """Squared global norm of ``grads`` over each group's leaves (float32)."""
    sq = [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)]
    return {
        g: sum((s for s, keep in zip(sq, m, strict=True) if keep), jnp.float32(0.0)) for g, m in masks.items()
    }


def probe_sq_norms(grad_fn, masks: dict[str, list[bool]], params, batch, *args):
    """{group: (|G_small|^2, |G_big|^2)} from the gradients of the two halves of ``batch`` (axis 0).

    ``grad_fn(params, half, *args)`` returns the gradient of the mean loss over ``half``. |G_small|^2 is the
    mean over the two halves (two independent small-batch estimates), |G_big|^2 the squared norm of the mean
    gradient (the whole batch's, for a loss that is a mean over its rows). Traceable: jit it with the step's
    shardings."""
    n = batch.shape[0]
    if n < 2 or n % 2:
        raise ValueError(f"the noise probe splits the batch in two halves: batch size must be even, got {n}")
    h = n // 2
    g_a = grad_fn(params, batch[:h], *args)
    g_b = grad_fn(params, batch[h:], *args)
    g_big = jax.tree.map(lambda a, b: (a.astype(jnp.float32) + b.astype(jnp.float32)) / 2, g_a, g_b)
    sq_a, sq_b, sq_big = group_sq_norms(g_a, masks), group_sq_norms(g_b, masks), group_sq_norms(g_big, masks)
    return {g: ((sq_a[g] + sq_b[g]) / 2, sq_big[g]) for g in masks}


def auto_expert_lr_scale(batch_tokens: float, b_noise_shared: float, b_noise_expert: float) -> float:
    """Hunyuan-Large's expert learning rate (arXiv 2411.02265 sec. 2.2.4) with measured noise scales: the
    routed experts' eps_opt over the shared parameters' eps_opt(B), the same eps_max for both.

    Both noise scales are measured over the whole batch's tokens (``probe_sq_norms``). An expert sees
    B_e = B k/E tokens of a batch of B (fewer when tokens are dropped), and its noise scale counted in its own
    tokens is B_noise(expert) B_e/B; eps_opt depends only on the ratio of batch to noise scale, so
    eps_opt(B_e; B_noise(expert) B_e/B) = eps_opt(B; B_noise(expert)) whatever B_e is. The paper's rule,
    eps_opt(B k/E)/eps_opt(B) at one B_noise (``moelab.train.optim.expert_lr_ratio``), is the special case
    B_noise(expert) = (E/k) B_noise(shared): an expert's per-token gradient noise equal to the shared
    one's."""
    return eps_opt(batch_tokens, 1.0, b_noise_expert) / eps_opt(batch_tokens, 1.0, b_noise_shared)


@dataclass
class NoiseEMA:
    """Exponential moving averages of |G|^2 and tr(Sigma) per group, bias-corrected as Adam's moments
    (divided by 1 - beta^n), and their ratio B_simple.

    ``update`` takes one probe's squared norms; ``b_simple(group)`` is None until a probe has been seen or
    while the smoothed |G|^2 or tr(Sigma) is not positive (one of them is below what the probes resolve, so
    B_simple is not measured, rather than a negative number).
    ``to_dict``/``from_dict`` carry the state through a checkpoint."""

    beta: float = 0.9
    n: int = 0
    g2: dict[str, float] = field(default_factory=dict)
    trace: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 1:
            raise ValueError(f"NoiseEMA.beta must be in [0, 1), got {self.beta}")

    def update(self, sq: dict[str, tuple[float, float]], b_small: float, b_big: float) -> None:
        for group, (small, big) in sq.items():
            g2, trace = unbiased_components(float(small), float(big), b_small, b_big)
            if not (math.isfinite(g2) and math.isfinite(trace)):
                continue
            self.g2[group] = self.beta * self.g2.get(group, 0.0) + (1 - self.beta) * g2
            self.trace[group] = self.beta * self.trace.get(group, 0.0) + (1 - self.beta) * trace
        self.n += 1

    def components(self, group: str) -> tuple[float, float] | None:
        """Bias-corrected (|G|^2, tr(Sigma)) of ``group``, None before its first probe."""
        if group not in self.g2 or self.n == 0:
            return None
        c = 1.0 - self.beta**self.n
        return self.g2[group] / c, self.trace[group] / c

    def b_simple(self, group: str = "all") -> float | None:
        comp = self.components(group)
        if comp is None or comp[0] <= 0 or comp[1] <= 0:
            return None
        return comp[1] / comp[0]

    def metrics(self) -> dict[str, float | None]:
        """``b_simple``, ``b_simple_expert``, ``b_simple_shared`` (None where unmeasured)."""
        return {("b_simple" if g == "all" else f"b_simple_{g}"): self.b_simple(g) for g in GROUPS}

    def to_dict(self) -> dict:
        return {"beta": self.beta, "n": self.n, "g2": dict(self.g2), "trace": dict(self.trace)}

    @classmethod
    def from_dict(cls, d: dict) -> NoiseEMA:
        return cls(beta=float(d["beta"]), n=int(d["n"]), g2=dict(d["g2"]), trace=dict(d["trace"]))
