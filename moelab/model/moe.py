"""The mixture-of-experts feed-forward layer: fp32 router, routed SwiGLU experts, shared experts.

``y = shared(x) + s · sum_j w_j · expert_{e_j}(x)`` (``s`` = ``routed_scale``, 1 unless set; DeepSeekMoE /
Hunyuan-Large: the shared experts see every token and are added to the routed output). Parameters:
``router`` [embed, experts]; ``w_gate``, ``w_up`` [experts, embed, mlp]; ``w_down`` [experts, mlp, embed];
``shared`` (a SwiGLU of width n_shared_experts · d_shared, which equals the sum of n_shared_experts SwiGLUs
of width d_shared).
State that is not a parameter: ``router_bias`` [experts] (a ``RouterBias``, only with ``router_bias_rate``
> 0), the selection bias of auxiliary-loss-free balancing, moved by the train step after each step.

Routing (moelab/model/router.py): token choice (softmax or sigmoid scores, top-k of score + bias) through a
dispatch strategy, or expert choice (``dispatch="expert_choice"``, moelab/model/dispatch/expert_choice.py),
where routing and dispatch are one step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moelab.config import ModelConfig
from moelab.model.dispatch import STRATEGIES, expert_choice, resolve
from moelab.model.layers import SwiGLU, param
from moelab.model.router import RouterBias, route, scores, z_loss
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
        if cfg.router_bias_rate > 0:
            self.router_bias = RouterBias(jnp.zeros((e,), jnp.float32), out_sharding=("experts",),
                                          eager_sharding=False)  # fmt: skip

    def __call__(self, x: jax.Array, key: jax.Array | None) -> tuple[jax.Array, RouterStats]:
        """x [B, T, d] -> (y [B, T, d], stats of this layer)."""
        cfg, dt = self.cfg, x.dtype
        b, t, d = x.shape
        flat = x.transpose(1, 0, 2).reshape(t * b, d)  # position-major: capacity favours earlier positions
        experts = (self.w_gate[...].astype(dt), self.w_up[...].astype(dt), self.w_down[...].astype(dt))
        zero = jnp.zeros((), jnp.float32)
        bias = self.router_bias[...] if cfg.router_bias_rate > 0 else None
        if cfg.dispatch == "expert_choice":
            logits = flat.astype(jnp.float32) @ self.router[...].astype(jnp.float32)
            s, _ = scores(logits, cfg.router_score)
            y, dropped, load = expert_choice.dispatch(flat, s, *experts, n_seqs=b, top_k=cfg.top_k,
                                                      capacity_factor=cfg.capacity_factor)  # fmt: skip
            aux, z, seq, recycled = zero, z_loss(logits), zero, zero
        else:
            r = route(flat, self.router[...], cfg.top_k, cfg.renormalize, score=cfg.router_score, bias=bias,
                      n_seqs=b if cfg.seq_aux_loss_coef > 0 else None)  # fmt: skip
            recycle_by_router = (
                cfg.dispatch == "capacity" and cfg.overflow == "recycle" and cfg.recycle_gate == "router"
            )
            extra = {"probs": r.probs} if recycle_by_router else {}
            y, dropped, recycled = STRATEGIES[resolve(cfg.dispatch)](
                flat, r.top_idx, r.top_w, *experts,
                capacity_factor=cfg.capacity_factor, overflow=cfg.overflow, key=key, **extra,
            )  # fmt: skip
            aux, z, seq, load = r.aux_loss, r.z_loss, r.seq_aux_loss, r.load
        y = y.reshape(t, b, d).transpose(1, 0, 2)
        if cfg.routed_scale != 1.0:
            y = y * jnp.asarray(cfg.routed_scale, dt)
        if cfg.n_shared_experts:
            y = y + self.shared(x)
        stats = RouterStats(aux_loss=aux, z_loss=z, load=load,
                            dropped_frac=jnp.asarray(dropped, jnp.float32),
                            recycled_frac=jnp.asarray(recycled, jnp.float32), seq_aux_loss=seq,
                            bias=jnp.zeros((cfg.n_experts,), jnp.float32) if bias is None else bias,
                            )  # fmt: skip
        return y, stats
