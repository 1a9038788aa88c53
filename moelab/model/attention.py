"""Grouped-query causal self-attention with cross-layer K/V sharing and optional per-head qk-norm.

GQA (Ainslie et al. 2023): ``n_kv_heads`` K/V heads, each shared by ``n_heads // n_kv_heads`` query heads.
CLA (Brandon et al. 2024; Hunyuan-Large, arXiv 2411.02265): a layer built with ``has_kv=False`` has no K/V
projection and attends with the (rotated, normalised) K/V handed over by the layer before it.
qk-norm: RMSNorm over head_dim of queries and keys, applied after RoPE as in Hunyuan-Large.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moelab.config import ModelConfig
from moelab.model.layers import RMSNorm, matmul, param, rope


class Attention(nnx.Module):
    """Parameters: ``q`` [embed, heads, head_dim], ``o`` [heads, head_dim, embed]; when ``has_kv``:
    ``k``, ``v`` [embed, kv_heads, head_dim]; with qk_norm: ``q_norm`` (and ``k_norm`` when ``has_kv``)
    [norm]."""

    def __init__(self, cfg: ModelConfig, has_kv: bool, pdt, rngs: nnx.Rngs):
        d, h, g, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.n_layers) ** 0.5
        self.cfg = cfg
        self.has_kv = has_kv
        self.q = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), std, pdt)
        self.o = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), out_std, pdt)
        if has_kv:
            self.k = param(rngs, (d, g, hd), ("embed", "kv_heads", "head_dim"), std, pdt)
            self.v = param(rngs, (d, g, hd), ("embed", "kv_heads", "head_dim"), std, pdt)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.norm_eps, pdt, rngs)
            if has_kv:
                self.k_norm = RMSNorm(hd, cfg.norm_eps, pdt, rngs)

    def __call__(self, x: jax.Array, kv: tuple[jax.Array, jax.Array] | None):
        """x [B, T, d] -> (out [B, T, d], (k, v) [B, T, kv_heads, head_dim] for the next layer to share)."""
        cfg, dt = self.cfg, x.dtype
        b, t, _ = x.shape
        positions = jnp.arange(t)
        q = rope(matmul(x, self.q[...].astype(dt)), positions, cfg.rope_theta)
        if cfg.qk_norm:
            q = self.q_norm(q)
        if self.has_kv:
            k = rope(matmul(x, self.k[...].astype(dt)), positions, cfg.rope_theta)
            v = matmul(x, self.v[...].astype(dt))
            if cfg.qk_norm:
                k = self.k_norm(k)
        else:
            assert kv is not None, "a layer without K/V projections needs the previous layer's K/V"
            k, v = kv
        g, hd = cfg.n_kv_heads, cfg.head_dim
        r = cfg.n_heads // g
        # [B, G, R*T, hd] queries against [B, G, S, hd] keys: plain batched matmuls (R query heads per group)
        qg = q.reshape(b, t, g, r, hd).transpose(0, 2, 3, 1, 4).reshape(b, g, r * t, hd)
        kg, vg = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        scores = jnp.einsum("bgqk,bgsk->bgqs", qg, kg).astype(jnp.float32) * hd**-0.5
        causal = jnp.tile(jnp.tril(jnp.ones((t, t), dtype=bool)), (r, 1))  # [R*T, S]
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        out = jnp.einsum("bgqs,bgsk->bgqk", probs, vg).reshape(b, g, r, t, hd).transpose(0, 3, 1, 2, 4)
        return matmul(out.reshape(b, t, cfg.n_heads, hd), self.o[...].astype(dt), n_in=2), (k, v)
