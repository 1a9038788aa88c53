"""The mixture-of-experts feed-forward layer: fp32 router, routed SwiGLU experts, shared experts.

``y = shared(x) + sum_j w_j · expert_{e_j}(x)`` (DeepSeekMoE / Hunyuan-Large: the shared experts see every
token and are added to the routed output). Parameters: ``router`` [embed, experts]; ``w_gate``, ``w_up``
[experts, embed, mlp]; ``w_down`` [experts, mlp, embed]; ``shared`` (a SwiGLU of width
n_shared_experts · d_shared, which equals the sum of n_shared_experts SwiGLUs of width d_shared).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moelab.config import ModelConfig
from moelab.model.dispatch import STRATEGIES, resolve
from moelab.model.layers import SwiGLU, param
from moelab.model.router import route
from moelab.model.stats import RouterStats


class MoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, pdt, rngs: nnx.Rngs):
        d, e, f = cfg.d_model, cfg.n_experts, cfg.d_expert
        std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.n_layers) ** 0.5
        self.cfg = cfg
        self.router = param(rngs, (d, e), ("embed", "experts"), std, pdt)
        self.w_gate = param(rngs, (e, d, f), ("experts", "embed", "mlp"), std, pdt)
        self.w_up = param(rngs, (e, d, f), ("experts", "embed", "mlp"), std, pdt)
        self.w_down = param(rngs, (e, f, d), ("experts", "mlp", "embed"), out_std, pdt)
        if cfg.n_shared_experts:
            self.shared = SwiGLU(d, cfg.n_shared_experts * cfg.d_shared, std, out_std, pdt, rngs)

    def __call__(self, x: jax.Array, key: jax.Array | None) -> tuple[jax.Array, RouterStats]:
        """x [B, T, d] -> (y [B, T, d], stats of this layer)."""
        cfg, dt = self.cfg, x.dtype
        b, t, d = x.shape
        flat = x.transpose(1, 0, 2).reshape(t * b, d)  # position-major: capacity favours earlier positions
        r = route(flat, self.router[...], cfg.top_k, cfg.renormalize)
        recycle_by_router = (
            cfg.dispatch == "capacity" and cfg.overflow == "recycle" and cfg.recycle_gate == "router"
        )
        extra = {"probs": r.probs} if recycle_by_router else {}
        y, dropped, recycled = STRATEGIES[resolve(cfg.dispatch)](
            flat, r.top_idx, r.top_w,
            self.w_gate[...].astype(dt), self.w_up[...].astype(dt), self.w_down[...].astype(dt),
            capacity_factor=cfg.capacity_factor, overflow=cfg.overflow, key=key, **extra,
        )  # fmt: skip
        y = y.reshape(t, b, d).transpose(1, 0, 2)
        if cfg.n_shared_experts:
            y = y + self.shared(x)
        stats = RouterStats(aux_loss=r.aux_loss, z_loss=r.z_loss, load=r.load,
                            dropped_frac=jnp.asarray(dropped, jnp.float32),
                            recycled_frac=jnp.asarray(recycled, jnp.float32))  # fmt: skip
        return y, stats
