"""Memory and time plan of a large configuration on a mesh of accelerators (``moelab plan``).

Per chip, for a global batch of ``batch`` sequences of ``seq`` tokens on ``chips`` chips:

- **Parameters.** Every parameter group of ``moelab.model.Transformer`` (the tree of ``moelab.accounting``'s
  docstring, ``param_groups``) is cut by the sharding rules of ``moelab.parallel.rules``; the per-chip count
  is the sum of the local shard sizes (tested against the abstract model built with its shardings).
- **Training state**, mixed precision with fp32 master weights (Micikevicius et al. 2018) and Adam, counted
  per parameter as in ZeRO (Rajbhandari et al. 2020, sec. 3.1) except that gradients are accumulated in fp32:
  bf16 weights 2 B, fp32 master weights 4 B, Adam first and second moments 4 + 4 B, fp32 gradients 4 B:
  18 bytes per local parameter.
- **Weight buffers**: FSDP all-gathers one layer's weights (bf16) at a time; two layers are kept (the layer in
  use and the prefetched next one).
- **Activations** of one micro-batch under the remat policy, per token and layer, following the bookkeeping of
  Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", sec. 4) with a
  memory-efficient (flash) attention that stores the log-sum-exp instead of the T x T scores:
  see ``activation_bytes_per_token_layer``. Tensor-split tensors are divided by ``tensor``; the residual
  stream is not (no sequence parallelism). The fp32 logits and their gradient ([tokens, vocab / tensor] each)
  come on top.
- The micro-batch is the largest divisor of the per-chip batch whose total fits; the rest is gradient
  accumulation. A plan **fits** when the total is at most ``(1 - headroom) * HBM``.

Time: FLOPs per step = ``moelab.accounting.train_flops_per_token(cfg, seq) * batch * seq``; step time =
FLOPs / (chips * peak bf16 FLOP/s * MFU); the MFU is an input (default 0.40), not a prediction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from moelab.accounting import kv_cache_bytes_per_token, param_counts, train_flops_per_token
from moelab.config import ModelConfig
from moelab.errors import ConfigError
from moelab.parallel.chips import Chip
from moelab.parallel.mesh import MeshShape
from moelab.parallel.remat import check_policy
from moelab.parallel.rules import PARAM_RULES, local_shape
from moelab.presets import published_train_tokens

BYTES_PER_PARAM = {"bf16 weights": 2, "fp32 master weights": 4, "Adam moments (fp32 m, v)": 8,
                   "fp32 gradients": 4}
SECONDS_PER_DAY = 86400.0
LONG_CONTEXT = 256 * 1024


@dataclass(frozen=True)
class ParamGroup:
    name: str
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    count: int  # how many arrays of this shape (e.g. one per layer)
    per_layer: bool = True

    @property
    def size(self) -> int:
        return math.prod(self.shape) * self.count


def param_groups(cfg: ModelConfig) -> list[ParamGroup]:
    """The parameter arrays of ``Transformer(cfg)`` with their logical axes (see moelab/accounting.py)."""
    d, L, hd, H, KV = cfg.d_model, cfg.n_layers, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    kvl = cfg.n_kv_layers
    g = [
        ParamGroup("embedding", (cfg.vocab_size, d), ("vocab", "embed"), 1, per_layer=False),
        ParamGroup("final_norm", (d,), ("norm",), 1, per_layer=False),
        ParamGroup("attn_norm", (d,), ("norm",), L),
        ParamGroup("q", (d, H, hd), ("embed", "heads", "head_dim"), L),
        ParamGroup("o", (H, hd, d), ("heads", "head_dim", "embed"), L),
        ParamGroup("k", (d, KV, hd), ("embed", "kv_heads", "head_dim"), kvl),
        ParamGroup("v", (d, KV, hd), ("embed", "kv_heads", "head_dim"), kvl),
        ParamGroup("mlp_norm", (d,), ("norm",), L),
    ]
    if not cfg.tie_embeddings:
        g.append(ParamGroup("lm_head", (d, cfg.vocab_size), ("embed", "vocab"), 1, per_layer=False))
    if cfg.qk_norm:
        g += [ParamGroup("q_norm", (hd,), ("norm",), L), ParamGroup("k_norm", (hd,), ("norm",), kvl)]
    f = cfg.d_expert
    if cfg.is_moe:
        E = cfg.n_experts
        g += [
            ParamGroup("router", (d, E), ("embed", "experts"), L),
            ParamGroup("experts.gate", (E, d, f), ("experts", "embed", "mlp"), L),
            ParamGroup("experts.up", (E, d, f), ("experts", "embed", "mlp"), L),
            ParamGroup("experts.down", (E, f, d), ("experts", "mlp", "embed"), L),
        ]
        if cfg.n_shared_experts:
            s = cfg.n_shared_experts * cfg.d_shared
            g += [
                ParamGroup("shared.gate", (d, s), ("embed", "mlp"), L),
                ParamGroup("shared.up", (d, s), ("embed", "mlp"), L),
                ParamGroup("shared.down", (s, d), ("mlp", "embed"), L),
            ]
    else:
        g += [
            ParamGroup("mlp.gate", (d, f), ("embed", "mlp"), L),
            ParamGroup("mlp.up", (d, f), ("embed", "mlp"), L),
            ParamGroup("mlp.down", (f, d), ("mlp", "embed"), L),
        ]
    return g


def local_params(cfg: ModelConfig, mesh: MeshShape) -> int:
    """Parameters stored on one chip under the sharding rules (the largest shard; shards are equal)."""
    sizes = mesh.as_dict()
    groups = param_groups(cfg)
    return sum(math.prod(local_shape(p.shape, p.axes, sizes, PARAM_RULES)) * p.count for p in groups)


def gathered_layer_params(cfg: ModelConfig, mesh: MeshShape) -> int:
    """One layer's parameters after the FSDP all-gather: the ZeRO cuts of d_model (over fsdp, and over expert
    for dense weights) are gathered; the expert split of routed experts and the tensor split remain."""
    sizes = {"expert": mesh.expert, "tensor": mesh.tensor}
    gathered_rules = {**PARAM_RULES, "embed": ()}
    total = 0
    for p in param_groups(cfg):
        if p.per_layer:
            total += math.prod(local_shape(p.shape, p.axes, sizes, gathered_rules)) * p.count / cfg.n_layers
    return int(total)


def activation_bytes_per_token_layer(cfg: ModelConfig, tensor: int, policy: str) -> float:
    """Activation bytes one token keeps for the backward pass of one layer (bf16 activations).

    Counted tensors (widths in elements; ``/t`` where the tensor axis splits them): layer input d, attention
    norm output d, q and attention output H·hd/t each, k and v 2·KV·hd/t (in K/V layers only: divided by
    cla_share), flash-attention log-sum-exp (fp32, H/t), output projection d, mlp norm output d, router logits
    and probabilities (fp32, 2·E), per routed slot (top_k·capacity_factor of them) gate, up and gate*up 3·f/t
    and its output d, the shared experts likewise with width n_shared·d_shared.

    - ``none``: everything above is stored.
    - ``minimal`` (``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``): matrix-product outputs are
      kept, element-wise results (norm outputs, gate*up) are recomputed.
    - ``full`` (``nothing_saveable`` around each layer): only the layer input d is kept; one layer's ``none``
      set is alive during its recomputation (added once by ``plan``).
    """
    check_policy(policy)
    d, hd, H, KV = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    kv_t = tensor if KV % tensor == 0 else 1
    h_t = tensor if H % tensor == 0 else 1
    q = H * hd / h_t
    kv = 2 * KV * hd / kv_t / cfg.cla_share
    lse = 4 * H / h_t  # fp32 bytes
    if cfg.is_moe:
        slots = cfg.top_k * (cfg.capacity_factor if cfg.dispatch == "capacity" else 1.0)
        routed_w, shared_w = cfg.d_expert, cfg.n_shared_experts * cfg.d_shared
        router = 4 * 2 * cfg.n_experts
        n_out = slots + (1 if shared_w else 0)
    else:
        slots, routed_w, shared_w, router, n_out = 1.0, cfg.d_expert, 0, 0.0, 1
    mlp_t = tensor
    if policy == "full":
        return 2.0 * d
    if policy == "none":
        ffn = 3 * (slots * routed_w + shared_w) / mlp_t
        return 2.0 * (d + d + q + kv + q + d + d + ffn + n_out * d) + lse + router
    ffn = 2 * (slots * routed_w + shared_w) / mlp_t  # gate and up (matmul outputs); gate*up recomputed
    return 2.0 * (d + q + kv + q + d + ffn + n_out * d) + lse + router


@dataclass
class Plan:
    preset: str
    chip: str
    chips: int
    mesh: str
    seq: int
    batch: int
    micro_batch: int  # sequences per chip per forward/backward pass
    grad_accum: int
    remat: str
    fits: bool
    hbm_bytes: float
    usable_bytes: float
    memory: dict[str, float]  # per chip, bytes
    total_params: int
    active_params: int
    total_params_with_embedding: int
    active_params_with_embedding: int
    params_per_chip: int
    flops_per_token: float
    flops_per_step: float
    mfu: float
    step_time_s: float
    tokens_per_step: int
    tokens_per_day: float
    train_tokens: float
    days_to_train: float
    kv_cache_bytes_per_token: int
    kv_cache_bytes_per_256k_sequence: int
    min_chips_to_fit: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def memory_total(self) -> float:
        return sum(self.memory.values())

    def to_dict(self) -> dict:
        out = asdict(self)
        out["memory_total"] = self.memory_total
        return out


def state_memory(cfg: ModelConfig, mesh: MeshShape) -> dict[str, float]:
    """Per-chip bytes that do not depend on the batch: training state and gathered weight buffers."""
    p = local_params(cfg, mesh)
    mem = {k: float(v * p) for k, v in BYTES_PER_PARAM.items()}
    mem["gathered weights (2 layers, bf16)"] = 2.0 * 2 * gathered_layer_params(cfg, mesh)
    return mem


def activation_memory(
    cfg: ModelConfig, mesh: MeshShape, seq: int, micro: int, remat: str
) -> dict[str, float]:
    """Per-chip activation bytes for ``micro`` sequences of ``seq`` tokens per forward/backward pass."""
    tokens = micro * seq
    act = tokens * activation_bytes_per_token_layer(cfg, mesh.tensor, remat) * cfg.n_layers
    if remat == "full":
        act += tokens * activation_bytes_per_token_layer(cfg, mesh.tensor, "none")
    act += tokens * 2 * cfg.d_model  # embedding output
    v_t = mesh.tensor if cfg.vocab_size % mesh.tensor == 0 else 1
    return {
        f"activations (remat={remat})": float(act),
        "logits + grad (fp32)": float(tokens * 2 * 4 * cfg.vocab_size / v_t),
    }


def memory_for(cfg: ModelConfig, mesh: MeshShape, seq: int, micro: int, remat: str) -> dict[str, float]:
    """Per-chip memory (bytes): ``state_memory`` plus ``activation_memory``."""
    return {**state_memory(cfg, mesh), **activation_memory(cfg, mesh, seq, micro, remat)}


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def candidate_meshes(cfg: ModelConfig, chips: int, chip: Chip, batch: int) -> list[MeshShape]:
    """Every (data, fsdp, expert, tensor) with product ``chips`` the rules can use for ``cfg``.

    expert divides n_experts (1 for a dense model), tensor divides n_heads and is at most the chip's fast
    domain, and the batch splits evenly over data * fsdp * expert.
    """
    out = []
    experts = _divisors(cfg.n_experts) if cfg.is_moe else [1]
    for tensor in _divisors(chips):
        if tensor > chip.max_tensor or cfg.n_heads % tensor:
            continue
        for expert in experts:
            if (chips // tensor) % expert:
                continue
            rest = chips // tensor // expert
            for data in _divisors(rest):
                m = MeshShape(data=data, fsdp=rest // data, expert=expert, tensor=tensor)
                if batch % m.batch_shards == 0:
                    out.append(m)
    return out


def best_micro_batch(cfg, mesh, seq, per_chip_seqs, remat, usable) -> tuple[int, dict[str, float], bool]:
    """(micro-batch, memory, fits): the largest divisor of the per-chip batch that fits, else the smallest."""
    static = state_memory(cfg, mesh)
    for micro in sorted(_divisors(per_chip_seqs), reverse=True):
        mem = {**static, **activation_memory(cfg, mesh, seq, micro, remat)}
        if sum(mem.values()) <= usable:
            return micro, mem, True
    return micro, mem, False


def _mesh_preference(m: MeshShape) -> tuple:
    """Among fitting meshes: least tensor parallelism (an all-reduce per layer), then the most expert
    parallelism (experts stay put, tokens move), then the most pure data parallelism (no weight
    all-gathers)."""
    return (m.tensor, -m.expert, -m.data)


def plan(
    cfg: ModelConfig,
    chip: Chip,
    chips: int,
    *,
    seq: int = 4096,
    batch: int | None = None,
    mesh: MeshShape | None = None,
    remat: str = "full",
    mfu: float = 0.40,
    train_tokens: float | None = None,
    headroom: float = 0.10,
    preset: str = "",
    search_min_chips: bool = True,
) -> Plan:
    """The plan of ``cfg`` on ``chips`` chips; the mesh is chosen (``_mesh_preference``) unless given.
    ``train_tokens`` defaults to the published training tokens of a paper preset (``moelab.presets``)."""
    if train_tokens is None:
        train_tokens = published_train_tokens(cfg)
        if train_tokens is None:
            what = preset or "this config"
            raise ConfigError(f"--tokens: {what} has no published training tokens; give --tokens")
    if not (isinstance(chips, int) and chips >= 1):
        raise ConfigError(f"chips must be an integer >= 1, got {chips!r}")
    if not (isinstance(seq, int) and seq >= 1):
        raise ConfigError(f"seq must be an integer >= 1, got {seq!r}")
    if not (0 < mfu <= 1):
        raise ConfigError(f"mfu must be in (0, 1], got {mfu!r}")
    if not (0 <= headroom < 1):
        raise ConfigError(f"headroom must be in [0, 1), got {headroom!r}")
    check_policy(remat)
    if not train_tokens > 0:
        raise ConfigError(f"tokens must be > 0, got {train_tokens!r}")
    usable = (1 - headroom) * chip.hbm_bytes
    notes: list[str] = []
    if mesh is not None:
        if mesh.size != chips:
            raise ConfigError(f"mesh {mesh} has {mesh.size} chips but --chips is {chips}")
        batch = batch if batch is not None else max(mesh.batch_shards, 1)
        if batch % mesh.batch_shards:
            raise ConfigError(f"batch ({batch}) must be a multiple of data*fsdp*expert ({mesh.batch_shards})")
        candidates = [mesh]
    else:
        if batch is None:
            batch = chips  # one sequence per chip before tensor parallelism trims it
            while batch * seq < 4 * 2**20 and batch < 2**20:  # at least ~4M tokens per step
                batch *= 2
        if not (isinstance(batch, int) and batch >= 1):
            raise ConfigError(f"batch must be an integer >= 1, got {batch!r}")
        candidates = candidate_meshes(cfg, chips, chip, batch)
        if not candidates:
            raise ConfigError(
                f"no mesh of {chips} chips splits batch {batch} evenly with expert | {cfg.n_experts} "
                f"and tensor | {cfg.n_heads} (tensor <= {chip.max_tensor}); try a batch that is a multiple "
                f"of {chips}"
            )
    scored = []
    for m in candidates:
        micro, mem, ok = best_micro_batch(cfg, m, seq, batch // m.batch_shards, remat, usable)
        scored.append((m, micro, mem, ok))
    fitting = [s for s in scored if s[3]]
    if fitting:
        m, micro, mem, ok = min(fitting, key=lambda s: _mesh_preference(s[0]))
    else:
        m, micro, mem, ok = min(scored, key=lambda s: sum(s[2].values()))
    counts = param_counts(cfg)
    fpt = train_flops_per_token(cfg, seq)
    tokens_per_step = batch * seq
    flops_step = fpt * tokens_per_step
    step_time = flops_step / (chips * chip.peak_bf16_flops * mfu)
    tokens_per_day = tokens_per_step / step_time * SECONDS_PER_DAY
    kv = kv_cache_bytes_per_token(cfg)
    min_chips = None
    if not ok and search_min_chips:
        min_chips = _min_chips(cfg, chip, seq, remat, headroom, start=chips)
    if m.expert > 1 and cfg.is_moe:
        notes.append(f"{cfg.n_experts // m.expert} routed expert(s) per expert shard; tokens move between "
                     "shards by all-to-all")
    return Plan(
        preset=preset, chip=chip.name, chips=chips, mesh=str(m), seq=seq, batch=batch, micro_batch=micro,
        grad_accum=batch // m.batch_shards // micro, remat=remat, fits=ok, hbm_bytes=chip.hbm_bytes,
        usable_bytes=usable, memory=mem, total_params=counts.total, active_params=counts.active,
        total_params_with_embedding=counts.total_with_embedding,
        active_params_with_embedding=counts.active_with_embedding, params_per_chip=local_params(cfg, m),
        flops_per_token=fpt, flops_per_step=flops_step, mfu=mfu, step_time_s=step_time,
        tokens_per_step=tokens_per_step, tokens_per_day=tokens_per_day, train_tokens=train_tokens,
        days_to_train=train_tokens / tokens_per_day, kv_cache_bytes_per_token=kv,
        kv_cache_bytes_per_256k_sequence=kv * LONG_CONTEXT, min_chips_to_fit=min_chips, notes=notes,
    )


def _min_chips(cfg, chip, seq, remat, headroom, start: int, limit: int = 2**16) -> int | None:
    """Smallest power-of-two multiple of ``start`` chips (up to ``limit``) on which some mesh fits."""
    n = start * 2
    while n <= limit:
        p = plan(cfg, chip, n, seq=seq, remat=remat, headroom=headroom, search_min_chips=False)
        if p.fits:
            return n
        n *= 2
    return None
