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
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from moelab.train.optim import ParamKind, eps_opt, set_expert_scale

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


def make_noise_probe(loss_fn, labels, *, mesh=None):
    """The jitted probe ``(params, rest, batch, step, seed) -> {group: (|G_small|^2, |G_big|^2)}``.

    ``loss_fn(params, rest, batch, router_key) -> (total, aux)`` is the training objective
    (``moelab.train.step.make_loss_fn``); the router key is the train step's,
    ``fold_in(key(seed + 1), step)``, so the probe routes the batch as the step does. On a mesh the outputs
    are replicated."""
    masks = group_masks(labels)

    def grad_fn(params, half, rest, key):
        return jax.grad(lambda p: loss_fn(p, rest, half, key)[0])(params)

    def probe(params, rest, batch, step, seed):
        key = jax.random.fold_in(jax.random.key(seed + 1), step)
        return probe_sq_norms(grad_fn, masks, params, batch, rest, key)

    if mesh is None:
        return jax.jit(probe)
    return jax.jit(probe, out_shardings=NamedSharding(mesh, PartitionSpec()))


class NoiseMonitor:
    """The run loop's view of the noise scale: probe every ``train.noise_every`` steps (before the step, on
    its batch and parameters), keep the EMA, set ``expert_lr_scale: auto`` in the optimiser state, and report.

    The loop calls ``before_step`` each step, ``metrics()`` for each metrics row, ``state()`` into each
    checkpoint's meta (restored by ``for_run(..., meta=)``), and ``summary(train_time)`` at the end."""

    def __init__(self, probe, every: int, batch_tokens: int, *, auto: bool = False, warmup_steps: int = 0,
                 reason: str | None = None):  # fmt: skip
        self.probe, self.every, self.batch_tokens = probe, every, batch_tokens
        self.auto, self.warmup_steps, self.reason = auto, warmup_steps, reason
        self.ema = NoiseEMA()
        self.seconds, self.probes, self.timed = 0.0, 0, 0
        self._compiled = False  # the session's first probe compiles: its time is not the probe's cost
        self.scale = 1.0 if auto else None

    @classmethod
    def for_run(cls, run, loss_fn, labels, *, mesh=None, meta: dict | None = None) -> NoiseMonitor:
        t = run.train
        reason = None
        if t.noise_every == 0:
            reason = "train.noise_every is 0"
        elif t.batch_size % 2:
            reason = f"train.batch_size {t.batch_size} is odd (the probe splits the batch in two halves)"
        every = 0 if reason else t.noise_every
        probe = make_noise_probe(loss_fn, labels, mesh=mesh) if every else None
        mon = cls(probe, every, t.batch_size * t.seq_len, auto=t.expert_lr_scale == "auto",
                  warmup_steps=int(round(t.warmup_frac * run.total_steps())), reason=reason)  # fmt: skip
        saved = (meta or {}).get("noise")
        if saved:
            mon.ema = NoiseEMA.from_dict(saved["ema"])
            mon.seconds, mon.probes = float(saved["seconds"]), int(saved["probes"])
            mon.timed = int(saved.get("timed", 0))
            mon.scale = saved.get("scale", mon.scale)
        return mon

    def before_step(self, step: int, params, rest, batch, seed, opt_state):
        """Probe at every ``every``-th step (0-based); returns ``opt_state`` (with a new auto scale)."""
        if not self.every or step % self.every:
            return opt_state
        jax.block_until_ready(params)  # time the probe alone, not the tail of the previous step
        t0 = time.perf_counter()
        sq = jax.device_get(self.probe(params, rest, batch, np.int32(step), seed))
        if self._compiled:
            self.seconds += time.perf_counter() - t0
            self.timed += 1
        self._compiled = True
        self.probes += 1
        self.ema.update(sq, self.batch_tokens / 2, self.batch_tokens)
        if self.auto and step >= self.warmup_steps:
            shared, expert = self.ema.b_simple("shared"), self.ema.b_simple("expert")
            if shared is not None and expert is not None:
                self.scale = auto_expert_lr_scale(self.batch_tokens, shared, expert)
                opt_state = set_expert_scale(opt_state, self.scale)
        return opt_state

    def metrics(self) -> dict:
        if not self.every:
            return {}
        out = self.ema.metrics()
        if self.auto:
            out["expert_lr_scale"] = self.scale
        return out

    def state(self) -> dict:
        return {"noise": {"ema": self.ema.to_dict(), "seconds": self.seconds, "probes": self.probes,
                          "timed": self.timed, "scale": self.scale}}  # fmt: skip

    def summary(self, seconds: float) -> dict:
        """Final B_simple per group, the probe's share of the training time (``noise_overhead``: the seconds
        of the timed probes over the seconds of the steps, both from the run's timed intervals ``seconds``,
        which leave out each session's compiling first step), and why nothing was measured if so."""
        out = {**self.ema.metrics(), "noise_probes": self.probes, "noise_probe_s": self.seconds}
        step_s = seconds - self.seconds
        out["noise_overhead"] = self.seconds / step_s if self.timed and step_s > 0 else None
        if self.auto:
            out["expert_lr_scale_final"] = self.scale
        if self.reason:
            out["noise_not_measured"] = self.reason
        return out
