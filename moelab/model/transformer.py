"""The decoder-only transformer of the family, with layers stacked for a ``jax.lax.scan``.

Layers come in groups of ``cla_share`` (a *block*): the first layer of a block projects K/V, the others reuse
them. The ``n_layers / cla_share`` blocks are identical in structure, so their parameters are stacked on a
leading ``layers`` axis and the forward pass scans over blocks: compile time does not grow with depth. Up to
``UNROLL_MAX_BLOCKS`` blocks the scan is unrolled (the same program without the loop; faster on CPU), unless
a rematerialisation policy is installed.

Parameter tree (``nnx.state(model, nnx.Param)``), shapes with the stacked axis first:

- ``embed`` [vocab, embed]; ``lm_head`` [embed, vocab] only when not ``tie_embeddings``;
  ``final_norm/scale`` [norm]
- ``blocks/layer_{i}`` for i in 0..cla_share-1, each with a leading [layers] axis of size n_layers/cla_share:
  ``attn_norm/scale``, ``mlp_norm/scale`` [layers, norm]; ``attn/q`` [layers, embed, heads, head_dim];
  ``attn/o`` [layers, heads, head_dim, embed]; ``attn/k``, ``attn/v`` [layers, embed, kv_heads, head_dim]
  (layer_0 only); ``attn/q_norm/scale``, ``attn/k_norm/scale`` (qk_norm; k_norm in layer_0 only);
  dense: ``mlp/gate``, ``mlp/up`` [layers, embed, mlp], ``mlp/down`` [layers, mlp, embed];
  MoE: ``mlp/router`` [layers, embed, experts], ``mlp/w_gate``, ``mlp/w_up`` [layers, experts, embed, mlp],
  ``mlp/w_down`` [layers, experts, mlp, embed], ``mlp/shared/{gate,up,down}`` as the dense SwiGLU.

Axis names: every ``nnx.Param`` has ``out_sharding`` metadata, a tuple of logical names with one entry per
array axis, e.g. ``model.blocks.layer_0.attn.q.get_metadata()["out_sharding"] == ("layers", "embed", "heads",
"head_dim")``; ``nnx.get_partition_spec(nnx.state(model, nnx.Param))`` gives them for the whole tree.

Layer l of the model is block ``l // cla_share``, sublayer ``l % cla_share``. Stats are ordered by l.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moelab.config import ModelConfig
from moelab.model.attention import Attention
from moelab.model.hooks import constrain, layer_checkpoint, remat_installed
from moelab.model.layers import RMSNorm, SwiGLU, matmul, param
from moelab.model.moe import MoE
from moelab.model.stats import RouterStats

#: Scans over at most this many blocks are unrolled at trace time (``jax.lax.scan(..., unroll=n)``): no while
#: loop, so each block reads its stacked parameters by a static slice instead of a dynamic one and the
#: backward pass writes its gradients without the loop's carries. The ladder's 2- and 3-layer training steps
#: ran 12-15% faster (3% for E = 8 at 8e5) on the 2-core CPU, with the same losses (docs/model.md).
UNROLL_MAX_BLOCKS = 4


class Layer(nnx.Module):
    """Pre-norm residual layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig, has_kv: bool, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)  # one of moelab.config.DTYPES
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pdt, rngs)
        self.attn = Attention(cfg, has_kv, pdt, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pdt, rngs)
        if cfg.is_moe:
            self.mlp = MoE(cfg, pdt, rngs)
        else:
            out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
            self.mlp = SwiGLU(cfg.d_model, cfg.d_expert, cfg.init_std, out_std, pdt, rngs)

    def __call__(self, x, kv, key):
        h, kv = self.attn(self.attn_norm(x), kv)
        x = x + h
        if self.cfg.is_moe:
            h, stats = self.mlp(self.mlp_norm(x), key)
        else:
            h, stats = self.mlp(self.mlp_norm(x)), RouterStats.dense()
        return x + h, kv, stats


class Block(nnx.Module):
    """``cla_share`` consecutive layers; only ``layer_0`` projects K/V."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cla_share = cfg.cla_share
        for i in range(cfg.cla_share):
            setattr(self, f"layer_{i}", Layer(cfg, has_kv=(i == 0), rngs=rngs))

    def __call__(self, x, key):
        kv, all_stats = None, []
        for i in range(self.cla_share):
            x, kv, stats = getattr(self, f"layer_{i}")(x, kv, jax.random.fold_in(key, i))
            all_stats.append(stats)
        return x, jax.tree.map(lambda *s: jnp.stack(s), *all_stats)


class Transformer(nnx.Module):
    """``Transformer(cfg, rngs=nnx.Rngs(seed))``; ``model(tokens[B, T] int32, router_key=None)`` returns
    ``(logits [B, T, vocab] float32, stats)`` with stats a ``RouterStats`` (moelab/model/stats.py) whose every
    field has a leading [n_layers] axis: ``aux_loss``, ``z_loss``, ``dropped_frac``, ``recycled_frac``
    [n_layers] and ``load`` [n_layers, n_experts] (a dense model reports [n_layers, 1] of ones).
    ``router_key`` seeds recycle routing (a fixed key when None).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)  # one of moelab.config.DTYPES
        self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std, pdt)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std, pdt)
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pdt, rngs)
        n_blocks = cfg.n_layers // cfg.cla_share

        @nnx.split_rngs(splits=n_blocks)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs)

        self.blocks = make_blocks(rngs)

    def __call__(self, tokens: jax.Array, router_key: jax.Array | None = None):
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        b, t = tokens.shape
        if t > cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len={cfg.max_seq_len}")
        x = jnp.take(self.embed[...], tokens, axis=0).astype(dt)
        x = constrain(x, ("batch", "seq", "embed"))  # the residual stream is split over the batch
        key = jax.random.key(0) if router_key is None else router_key
        graphdef, state = nnx.split(self.blocks)
        n_blocks = cfg.n_layers // cfg.cla_share

        @layer_checkpoint  # the installed remat policy (moelab.model.hooks; none by default)
        def body(x, inputs):
            block_state, i = inputs
            block = nnx.merge(graphdef, block_state)
            return block(x, jax.random.fold_in(key, i))

        # not under a remat policy: unrolled, XLA merges a block's recomputation with its forward pass (CSE
        # across what was the loop boundary) and the policy's memory saving is gone (tests/test_model.py)
        unroll = n_blocks if n_blocks <= UNROLL_MAX_BLOCKS and not remat_installed() else 1
        x, stats = jax.lax.scan(body, x, (state, jnp.arange(n_blocks)), unroll=unroll)
        x = self.final_norm(x)
        head = self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]
        logits = matmul(x, head.astype(dt)).astype(jnp.float32)
        # [blocks, cla_share, ...] -> [n_layers, ...]: layer l = block l // cla_share, sublayer l % cla_share
        return logits, jax.tree.map(lambda s: s.reshape((cfg.n_layers,) + s.shape[2:]), stats)
