"""Slow, obvious references of the routers: ground truth for the tests of ``router.py`` and
``dispatch/expert_choice.py`` (outputs and gradients).

Each reference is in two parts, as the dispatch reference: the *choice* (which experts, which tokens) is made
by plain loops over NumPy float64 arrays, independently of the fast code; the *values* (gate weights, losses,
outputs) are then computed token by token with ``jax.numpy`` given that choice, so ``jax.grad`` can
differentiate them. Tokens are position-major (``n = t * n_seqs + b``), as the MoE layer hands them over.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from moelab.model.layers import swiglu


def _scores_np(logits: np.ndarray, score: str) -> np.ndarray:
    if score == "softmax":
        e = np.exp(logits - logits.max())
        return e / e.sum()
    return 1.0 / (1.0 + np.exp(-logits))


def choose_experts(x, w_router, top_k: int, score: str = "softmax", bias=None) -> np.ndarray:
    """[N, k] experts of each token: the k largest score + bias, best first (ties: lower index first)."""
    x, w = np.asarray(x, np.float64), np.asarray(w_router, np.float64)
    b = np.zeros(w.shape[1]) if bias is None else np.asarray(bias, np.float64)
    out = []
    for n in range(x.shape[0]):
        s = _scores_np(x[n] @ w, score) + b
        out.append(sorted(range(len(s)), key=lambda e, s=s: (-s[e], e))[:top_k])
    return np.array(out, dtype=np.int32)


def _token_scores(x_n, w, score):
    logits = x_n.astype(jnp.float32) @ w.astype(jnp.float32)
    if score == "softmax":
        e = jnp.exp(logits - jnp.max(logits))
        return logits, e / jnp.sum(e), e / jnp.sum(e)
    s = 1.0 / (1.0 + jnp.exp(-logits))
    return logits, s, s / jnp.sum(s)


def route(x, w_router, choice, renormalize: bool, score: str = "softmax", n_seqs: int | None = None):
    """(top_w [N, k], aux, z, load [E], seq_aux) for the given ``choice`` [N, k], token by token."""
    choice = np.asarray(choice)
    n, k = choice.shape
    n_experts = w_router.shape[1]
    weights, probs, z = [], [], 0.0
    for t in range(n):
        logits, s, p = _token_scores(x[t], w_router, score)
        w = jnp.stack([s[int(e)] for e in choice[t]])
        if renormalize or score == "sigmoid":
            w = w / jnp.sum(w)
        weights.append(w)
        probs.append(p)
        z = z + (jnp.max(logits) + jnp.log(jnp.sum(jnp.exp(logits - jnp.max(logits))))) ** 2

    def balance(tokens):
        count = np.zeros(n_experts)
        for t in tokens:
            for e in choice[t]:
                count[int(e)] += 1
        f = count / (len(tokens) * k)
        mean_p = sum(probs[t] for t in tokens) / len(tokens)
        return n_experts * jnp.sum(jnp.asarray(f, jnp.float32) * mean_p)

    aux = balance(range(n))
    load = np.bincount(choice.reshape(-1), minlength=n_experts) / (n * k)
    seq = 0.0
    if n_seqs:
        seq = sum(balance(range(b, n, n_seqs)) for b in range(n_seqs)) / n_seqs
    return jnp.stack(weights), aux, z / n, load, seq


def choose_tokens(s, n_seqs: int, top_k: int, capacity_factor: float) -> list[list[list[int]]]:
    """Expert choice: for each position-group and expert, the C tokens (indices into the N tokens) with the
    highest score, best first (ties: lower index first)."""
    s = np.asarray(s, np.float64)
    n, n_experts = s.shape
    cap = min(n_seqs * top_k, max(1, math.ceil(capacity_factor * n_seqs * top_k / n_experts)))
    cap = min(cap, n_seqs)
    out = []
    for t in range(n // n_seqs):
        group = list(range(t * n_seqs, (t + 1) * n_seqs))
        out.append([sorted(group, key=lambda m, e=e: (-s[m, e], m))[:cap] for e in range(n_experts)])
    return out


def expert_choice(x, s, w_gate, w_up, w_down, chosen) -> tuple:
    """(y [N, d], dropped_frac) of expert-choice routing for the given ``chosen`` tokens, expert by expert in
    each group: ``y[m] += s[m, e] * SwiGLU_e(x[m])`` for every token m that expert e chose."""
    n = x.shape[0]
    y = jnp.zeros_like(x)
    served = np.zeros(n, bool)
    for per_expert in chosen:
        for e, tokens in enumerate(per_expert):
            m = np.asarray(tokens)
            out = swiglu(x[m], w_gate[e], w_up[e], w_down[e])
            y = y.at[m].add(s[m, e].astype(x.dtype)[:, None] * out)
            served[m] = True
    return y, float(np.mean(~served))


def update_bias(bias, load, rate: float) -> np.ndarray:
    """Auxiliary-loss-free balancing, expert by expert: -rate when over the layer's mean load, +rate under."""
    bias, load = np.array(bias, np.float64), np.asarray(load, np.float64)
    for idx in np.ndindex(load.shape[:-1]):
        mean = sum(load[idx]) / load.shape[-1]
        for e in range(load.shape[-1]):
            bias[idx + (e,)] += -rate if load[idx + (e,)] > mean else rate if load[idx + (e,)] < mean else 0.0
    return bias
