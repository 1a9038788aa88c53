"""Parameter, FLOP and KV-cache accounting of a ``ModelConfig`` (pure arithmetic, no JAX).

Parameter counts equal the size of ``moelab.model.Transformer``'s parameter tree exactly (tested). The
tree, per layer ``l`` of ``n_layers`` (no biases anywhere):

- attention: ``attn_norm`` [d]; ``q`` [d, n_heads, head_dim]; ``o`` [n_heads, head_dim, d]; in the first
  layer of each cross-layer group only (``n_layers / cla_share`` layers) ``k`` and ``v`` [d, n_kv_heads,
  head_dim]; with ``qk_norm`` a ``q_norm`` [head_dim] in every layer and a ``k_norm`` [head_dim] in
  the K/V layers;
- feed-forward: ``mlp_norm`` [d]; dense (``n_experts == 1``): SwiGLU ``gate``, ``up`` [d, d_expert] and
  ``down`` [d_expert, d]; MoE: ``router`` [d, n_experts], routed SwiGLU experts [n_experts, d, d_expert]
  x2 and [n_experts, d_expert, d], shared experts as one SwiGLU of width ``n_shared_experts * d_shared``;
- once: ``final_norm`` [d]; the embedding [vocab, d]; an output head [d, vocab] unless ``tie_embeddings``.

Activated parameters are those one token passes through: everything but the ``n_experts - top_k`` routed
experts it is not sent to. The router and the norms are counted (every token uses them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # accounting reads a config's fields; it never builds one (no import cycle with config)
    from moelab.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts; ``total`` and ``active`` exclude the embedding and the output head."""

    total: int
    active: int
    embedding: int  # input embedding + untied output head (the tied matrix counts once)
    total_with_embedding: int
    active_with_embedding: int
    attention: int  # all layers, norms before attention included
    routed_experts: int  # all routed experts of all layers (dense FFN when n_experts == 1)
    shared_experts: int
    router: int
    norms: int  # every RMSNorm scale (attention, mlp, final, qk)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Exact parameter counts of ``Transformer(cfg)``; see the module docstring for the tree."""
    d, L, hd = cfg.d_model, cfg.n_layers, cfg.head_dim
    kv_layers = cfg.n_kv_layers
    q_o = 2 * d * cfg.n_heads * hd * L
    k_v = 2 * d * cfg.n_kv_heads * hd * kv_layers
    qk_norms = (hd * L + hd * kv_layers) if cfg.qk_norm else 0
    layer_norms = 2 * d * L  # attn_norm + mlp_norm
    norms = layer_norms + d + qk_norms
    attention = q_o + k_v
    per_expert = 3 * d * cfg.d_expert
    routed = per_expert * cfg.n_experts * L
    routed_active = per_expert * cfg.top_k * L
    shared = 3 * d * cfg.n_shared_experts * cfg.d_shared * L
    router = d * cfg.n_experts * L if cfg.is_moe else 0
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    total = attention + routed + shared + router + norms
    active = attention + routed_active + shared + router + norms
    return ParamCounts(
        total=total,
        active=active,
        embedding=embedding,
        total_with_embedding=total + embedding,
        active_with_embedding=active + embedding,
        attention=attention,
        routed_experts=routed,
        shared_experts=shared,
        router=router,
        norms=norms,
    )


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), attention included.

    ``6 * (N_active + d_model * vocab) + 12 * n_layers * seq_len * n_heads * head_dim``

    - ``6 N``: each weight does one multiply-add (2 FLOPs) per token forward and two backward (Kaplan et al.
      2020, sec. 2.1; Hoffmann et al. 2022, app. F). N is the activated non-embedding count plus the output
      projection to the vocabulary (the embedding lookup itself costs no FLOPs).
    - attention scores and values: forward ``2 * 2 * seq_len * n_heads * head_dim`` per layer (QK^T and
      AV over the full, unmasked T x T product, which is what the model computes), times 3 for training: the
      ``12 * n_layer * d * l_seq`` term of DeepSeek LLM (2024, eq. 2) and Chinchilla's appendix F.
    - the router (``d_model * n_experts`` weights) is part of N_active; dispatch gathers/scatters, softmax and
      norms are not counted (well under 1%).

    Hunyuan-Large's paper writes its own compute model, whose coefficient of N D is above 6: it folds in
    costs this formula leaves out (the paper does not break it down): compare with
    ``moelab.presets.paper_facts("hunyuan-large").cost_per_token``.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n = param_counts(cfg).active + cfg.d_model * cfg.vocab_size
    attention = 12 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
    return float(6 * n + attention)


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 2) -> int:
    """Bytes of K/V cache one token occupies at inference.

    ``2 (K and V) * n_kv_heads * head_dim * (n_layers / cla_share) * bytes_per_value``, i.e. Hunyuan-Large's
    table (arXiv 2411.02265, tab. 1, bf16): MHA 4·nh·dh·l, GQA 4·ng·dh·l, CLA 2·nh·dh·l, GQA+CLA 2·ng·dh·l.
    """
    return 2 * cfg.n_kv_heads * cfg.head_dim * cfg.n_kv_layers * int(bytes_per_value)


def mha_equivalent(cfg: ModelConfig) -> ModelConfig:
    """The same model with plain multi-head attention (no GQA, no cross-layer sharing)."""
    return cfg.replace(n_kv_heads=cfg.n_heads, cla_share=1)
