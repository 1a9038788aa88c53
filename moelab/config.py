"""Model configuration: one frozen dataclass spans dense, top-k, fine-grained MoE and Hunyuan-Large.

``ModelConfig`` names every architectural number of the decoder-only transformer in ``moelab.model``. It is
a frozen dataclass; ``to_dict()`` / ``from_dict()`` round-trip it through JSON, and every invalid value
raises ``moelab.errors.ConfigError`` (also a ``ValueError``) naming the field and the allowed range.

Vocabulary (../shared/DESIGN.md): ``n_experts`` routed experts per layer (1 = dense feed-forward layer),
``top_k`` routed experts per token, ``n_shared_experts`` experts every token passes through, ``d_expert``
the width of one routed expert (of the dense FFN when ``n_experts == 1``), ``d_shared`` the width of one
shared expert, ``shared_ratio`` = shared / (shared + top_k routed) activated FFN width, ``granularity`` =
dense-equivalent FFN width (``FFN_MULT * d_model``) over ``d_expert`` (Krajewski et al. 2024).

``ModelConfig.from_budget`` is the model family: from an activated non-embedding parameter budget, expert
count, shared ratio, top-k and granularity it derives width, depth and expert widths (rule in its docstring).

Only ``ModelConfig`` lives here; the data and training configurations belong to ``moelab.train``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from moelab.accounting import param_counts
from moelab.errors import ConfigError, check, shown
from moelab.errors import is_int as _is_int  # noqa: I001  (one home: moelab.errors)
from moelab.errors import is_number as _is_num

#: The family's dense feed-forward width per unit of d_model: 8/3, the SwiGLU width that holds the parameters
#: of a GELU MLP of width 4·d (Shazeer 2020; LLaMA). It defines
#: ``granularity = FFN_MULT * d_model / d_expert``
#: (Krajewski et al. 2024: dense FFN width over one expert's width) and from_budget's dense FFN; with it
#: Hunyuan-Large's full-width experts (18,304 at d_model 6,400) read G = 0.93.
FFN_MULT = 8 / 3

#: Largest size of any one dimension (an XLA array dimension is a 32-bit integer).
MAX_DIM = 2**31 - 1

#: Fewest layers of a family member (Kaplan et al. 2020, fig. 6: one-layer models fall off the trend).
MIN_LAYERS = 2

#: d_model / n_layers aspect ratio used by from_budget's depth rule (Kaplan et al. 2020 find loss flat over
#: aspect ratios 20..200 at fixed parameters; 64 is close to GPT-2 small (768/12)).
ASPECT_RATIO = 64

DISPATCH = ("capacity", "dropless", "blocksparse", "auto", "expert_choice")
OVERFLOW = ("drop", "recycle")
#: Gate weight of a recycled assignment: the router probability of the expert it lands on (``router``, as
#: Tencent's released ``top1gating``, which multiplies the softmax by the final dispatch mask) or the weight
#: of the expert that overflowed (``kept``, this lab's first behaviour).
RECYCLE_GATES = ("router", "kept")
#: Router scores: ``softmax`` over experts, or one ``sigmoid`` per expert normalised over the chosen ones
#: (DeepSeek-V3); see moelab/model/router.py.
ROUTER_SCORES = ("softmax", "sigmoid")
DTYPES = ("float32", "bfloat16", "float16")


def dataclass_from_dict(cls, data: Any, what: str):
    """``cls(**data)`` for a config dataclass, with one-line errors for a non-mapping or unknown fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} config must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(shown, set(data) - known))
    check(
        not unknown,
        f"unknown {what} config field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}",
    )
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only transformer of the family (all sizes are element counts).

    Attention is grouped-query (``n_kv_heads`` K/V heads shared by ``n_heads // n_kv_heads`` query heads each)
    with cross-layer K/V sharing: with ``cla_share = c`` only the first layer of every group of ``c``
    consecutive layers projects K and V; the other ``c - 1`` reuse them (Brandon et al. 2024; Hunyuan-Large
    uses c = 2).
    ``qk_norm`` applies a per-head RMSNorm (scale of size head_dim) to queries and keys after RoPE, as
    Hunyuan-Large.

    Routing: fp32 softmax over ``n_experts`` logits, top-``top_k``; weights renormalised to sum to one when
    ``renormalize`` (Mixtral) or kept as the raw softmax probabilities (Switch / GShard / Hunyuan-Large).
    ``dispatch``: ``capacity`` (per-expert buffers of ``capacity_factor * tokens * top_k / n_experts`` slots;
    overflow ``drop`` or ``recycle``, Hunyuan-Large's random re-assignment to experts with room) or
    a dropless one (``overflow`` and ``capacity_factor`` then unused): ``dropless`` (``jax.lax.ragged_dot``
    grouped matmuls), ``blocksparse`` (a grouped SwiGLU in blocks of sorted rows, fast on CPU) or ``auto``
    (the fastest dropless one for the backend, ``moelab.model.dispatch.resolve``).
    ``expert_choice``: experts pick their tokens (Zhou et al. 2022; ``top_k`` is then the mean number of
    experts per token and ``capacity_factor`` scales each expert's share).
    Router recipes (moelab/model/router.py): ``router_score`` softmax or sigmoid; ``router_bias_rate`` > 0
    turns on auxiliary-loss-free balancing (a per-expert selection bias moved by that much per step,
    DeepSeek-V3: 0.001); ``seq_aux_loss_coef`` weights DeepSeek-V3's sequence-wise balance loss (1e-4).
    ``routed_scale`` multiplies the routed experts' output (DeepSeek-V2/V3's ``routed_scaling_factor``: 16
    and 2.5): at top-1 of E softmax experts the raw gate is about 1/E at initialisation; ``routed_scale = E``
    starts the routed path at the scale of a dense FFN while the router still learns from the LM loss.
    The training loss is ``CE + aux_loss_coef * aux_loss + z_loss_coef * z_loss + seq_aux_loss_coef *
    seq_aux_loss``.
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    n_kv_heads: int = 2
    head_dim: int = 32
    cla_share: int = 1
    qk_norm: bool = False
    rope_theta: float = 10000.0
    max_seq_len: int = 256
    n_experts: int = 1
    top_k: int = 1
    n_shared_experts: int = 0
    d_expert: int = 256
    d_shared: int = 0
    capacity_factor: float = 1.25
    dispatch: str = "capacity"
    overflow: str = "drop"
    recycle_gate: str = "router"
    renormalize: bool = False
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    router_score: str = "softmax"
    router_bias_rate: float = 0.0
    seq_aux_loss_coef: float = 0.0
    routed_scale: float = 1.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "cla_share",
            "max_seq_len",
            "n_experts",
            "top_k",
            "d_expert",
        ):
            value = getattr(self, name)
            check(
                _is_int(value) and 1 <= value <= MAX_DIM,
                f"{name} must be an integer in [1, {MAX_DIM}], got {shown(value)}",
            )
        for name in ("n_shared_experts", "d_shared"):
            value = getattr(self, name)
            check(_is_int(value) and value >= 0, f"{name} must be an integer >= 0, got {value!r}")
        for name in ("qk_norm", "renormalize", "tie_embeddings"):
            check(
                isinstance(getattr(self, name), bool),
                f"{name} must be true or false, got {getattr(self, name)!r}",
            )
        for name in ("rope_theta", "capacity_factor", "norm_eps", "init_std", "routed_scale"):
            value = getattr(self, name)
            check(
                _is_num(value) and value > 0 and math.isfinite(value),
                f"{name} must be a number > 0, got {value!r}",
            )
        for name in ("aux_loss_coef", "z_loss_coef", "router_bias_rate", "seq_aux_loss_coef"):
            value = getattr(self, name)
            check(_is_num(value) and 0 <= value < math.inf, f"{name} must be a number >= 0, got {value!r}")
        check(
            self.n_heads % self.n_kv_heads == 0,
            f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}); "
            f"allowed n_kv_heads: divisors of {self.n_heads}",
        )
        check(
            self.n_layers % self.cla_share == 0,
            f"n_layers ({self.n_layers}) must be a multiple of cla_share ({self.cla_share})",
        )
        check(
            self.top_k <= self.n_experts,
            f"top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}",
        )
        if self.n_experts == 1:
            check(
                self.n_shared_experts == 0,
                f"n_shared_experts must be 0 for a dense model (n_experts=1), got {self.n_shared_experts}",
            )
        check(
            (self.n_shared_experts == 0) == (self.d_shared == 0),
            f"d_shared must be >= 1 when n_shared_experts >= 1 and 0 otherwise, got d_shared={self.d_shared} "
            f"with n_shared_experts={self.n_shared_experts}",
        )
        check(
            self.dispatch in DISPATCH, f"dispatch must be one of {'|'.join(DISPATCH)}, got {self.dispatch!r}"
        )
        check(
            self.overflow in OVERFLOW, f"overflow must be one of {'|'.join(OVERFLOW)}, got {self.overflow!r}"
        )
        check(
            self.recycle_gate in RECYCLE_GATES,
            f"recycle_gate must be one of {'|'.join(RECYCLE_GATES)}, got {self.recycle_gate!r}",
        )
        check(
            self.router_score in ROUTER_SCORES,
            f"router_score must be one of {'|'.join(ROUTER_SCORES)}, got {self.router_score!r}",
        )
        check(
            self.dispatch != "expert_choice" or self.router_bias_rate == 0,
            "router_bias_rate must be 0 with dispatch=expert_choice (experts choose their tokens: every "
            f"expert is equally loaded), got {self.router_bias_rate!r}",
        )
        for name in ("dtype", "param_dtype"):
            check(
                getattr(self, name) in DTYPES,
                f"{name} must be one of {'|'.join(DTYPES)}, got {getattr(self, name)!r}",
            )

    # ------------------------------------------------------------------ derived quantities
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 1

    @property
    def shared_ratio(self) -> float:
        """Shared share of the activated FFN width: n_shared·d_shared / (n_shared·d_shared +
        top_k·d_expert)."""
        shared = self.n_shared_experts * self.d_shared
        return shared / (shared + self.top_k * self.d_expert)

    @property
    def granularity(self) -> float:
        """Dense-equivalent FFN width (FFN_MULT·d_model) over one routed expert's width (Krajewski 2024)."""
        return FFN_MULT * self.d_model / self.d_expert

    @property
    def family_granularity(self) -> float:
        """The ``granularity`` argument of ``from_budget`` that gives this shape: top_k·F over the activated
        expert width (shared included). Equals ``granularity`` without shared experts; Hunyuan-Large's shape
        (one shared and one routed expert of equal width) reads 0.5 here and G = 1 per expert."""
        activated = self.top_k * self.d_expert + self.n_shared_experts * self.d_shared
        return self.top_k * FFN_MULT * self.d_model / activated

    @property
    def aspect_ratio(self) -> float:
        """d_model / n_layers (Kaplan et al. 2020 find the loss flat over about 20..200 at fixed size)."""
        return self.d_model / self.n_layers

    @property
    def n_kv_layers(self) -> int:
        """Layers that project their own K/V (the others reuse them, cross-layer sharing)."""
        return self.n_layers // self.cla_share

    def dropless(self) -> ModelConfig:
        """This model with a dispatch that serves every assignment (for evaluation: a token's loss then never
        depends on the rest of the batch or a recycle draw). Capacity with ``capacity_factor = E / k``
        gives every expert room for all N tokens, so nothing can overflow; the parameters are the same."""
        if not self.is_moe or self.dispatch != "capacity":
            return self
        return self.replace(capacity_factor=float(self.n_experts) / self.top_k, overflow="drop")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return dataclass_from_dict(cls, data, "model")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the family
    @classmethod
    def from_budget(
        cls,
        active_params: float,
        n_experts: int = 1,
        shared_ratio: float = 0.0,
        top_k: int = 1,
        granularity: float = 1.0,
        *,
        n_shared_experts: int | None = None,
        kv_group: int = 1,
        cla_share: int = 1,
        **overrides: Any,
    ) -> ModelConfig:
        """The member of the family with ``active_params`` activated non-embedding parameters (within 2%).

        Rule (documented in docs/model.md):

        1. Feed-forward shape (DeepSeekMoE's split, Krajewski et al.'s granularity): the family's dense FFN
           width is ``F = FFN_MULT·d_model`` (8/3·d, the SwiGLU width with a GELU-4d MLP's parameters). The
           *activated* expert width is ``A = top_k·F/granularity`` whatever ``shared_ratio`` is (G experts
           of 1/G width with top-k scaled by G activate one dense FFN's width). ``shared_ratio = r`` splits
           A: shared experts take ``r·A`` in all, each routed expert ``(1-r)·A/top_k`` (so with r > 0 a
           routed expert is narrower: its realised granularity is ``granularity/(1-r)``; Hunyuan-Large's
           shape, one shared and one routed expert of equal width, is ``top_k=1, r=0.5, granularity=0.5``).
           Hence at a fixed budget, top_k and granularity, d_model and depth do not change with r.
           Heads: ``head_dim`` 32 below d_model 256, 64 below 2048, else 128; ``n_heads = max(1, d_model //
           head_dim)``; ``n_kv_heads = n_heads / kv_group`` (the largest divisor of n_heads not above
           kv_group).
        2. Depth and width: for each depth (a multiple of ``cla_share``, at least ``MIN_LAYERS`` = 2: Kaplan
           et al. 2020, fig. 6, find one-layer models off the trend) take the d_model (a multiple of 2, of
           4 from 64, of 8 from 128) whose shape is nearest the budget; keep the depth whose
           d_model / n_layers is closest (in log) to ``ASPECT_RATIO`` = 64. Below about 2.5e5 activated
           parameters two layers give an aspect ratio under 20, the low end of the range where Kaplan et al.
           find it does not matter (20..200 within a few percent): ``aspect_ratio`` tells, and the sweep
           plan flags such runs.
        3. Exact fit: with d_model and depth fixed, scale the activated width A so that the activated count
           (``moelab.accounting.param_counts(cfg).active``) lands on the budget, then round the routed width
           and absorb the rounding in the shared width.

        Dense (``n_experts=1``) at the same budget, top_k 1 and granularity 1 has the same d_model and
        depth as an MoE with top_k 1, granularity 1 and no shared expert: the baseline of every comparison.
        Any other ModelConfig field (vocab_size, capacity_factor, dispatch, qk_norm, ...) goes in
        ``overrides``.
        """
        check(
            _is_num(active_params) and active_params >= 1e3,
            f"active_params must be a number >= 1e3, got {active_params!r}",
        )
        check(_is_int(n_experts) and n_experts >= 1, f"n_experts must be an integer >= 1, got {n_experts!r}")
        check(
            _is_int(top_k) and 1 <= top_k <= n_experts,
            f"top_k must be in [1, n_experts={n_experts}], got {top_k!r}",
        )
        check(
            _is_num(shared_ratio) and 0 <= shared_ratio < 1,
            f"shared_ratio must be in [0, 1), got {shared_ratio!r}",
        )
        check(
            _is_num(granularity) and granularity > 0, f"granularity must be a number > 0, got {granularity!r}"
        )
        check(
            n_experts > 1 or shared_ratio == 0,
            f"shared_ratio must be 0 for a dense model (n_experts=1), got {shared_ratio}",
        )
        if n_shared_experts is None:
            n_shared_experts = 1 if shared_ratio > 0 else 0
        check(
            _is_int(n_shared_experts) and n_shared_experts >= (1 if shared_ratio > 0 else 0),
            f"n_shared_experts must be an integer >= 1 when shared_ratio > 0, got {n_shared_experts!r}",
        )
        if shared_ratio == 0:
            n_shared_experts = 0
        check(_is_int(kv_group) and kv_group >= 1, f"kv_group must be an integer >= 1, got {kv_group!r}")
        check(_is_int(cla_share) and cla_share >= 1, f"cla_share must be an integer >= 1, got {cla_share!r}")
        budget = float(active_params)

        def shape(d_model: int, n_layers: int, activated: float, d_shared: int | None = None) -> ModelConfig:
            """The config with activated expert width ``activated`` split by shared_ratio."""
            head_dim = 32 if d_model < 256 else 64 if d_model < 2048 else 128
            n_heads = max(1, d_model // head_dim)
            group = max(g for g in range(1, min(kv_group, n_heads) + 1) if n_heads % g == 0)
            d_expert = max(1, round((1.0 - shared_ratio) * activated / top_k))
            if d_shared is None:
                d_shared = (
                    max(1, round(shared_ratio * activated / n_shared_experts)) if n_shared_experts else 0
                )
            fields = dict(
                d_model=d_model,
                n_layers=n_layers,
                n_heads=n_heads,
                n_kv_heads=n_heads // group,
                head_dim=head_dim,
                cla_share=cla_share,
                n_experts=n_experts,
                top_k=top_k,
                n_shared_experts=n_shared_experts,
                d_expert=d_expert,
                d_shared=d_shared,
            )
            fields.update(overrides)
            return cls(**fields)

        def target(d_model: int, n_layers: int) -> ModelConfig:
            return shape(d_model, n_layers, top_k * FFN_MULT * d_model / granularity)

        def width_for(n_layers: int) -> int:
            """d_model (a multiple of 2, of 4 from 64, of 8 from 128) whose target is nearest the budget."""
            lo, hi = 1, 16384  # in units of 2: smallest width reaching the budget
            while lo < hi:
                mid = (lo + hi) // 2
                if param_counts(target(2 * mid, n_layers)).active >= budget:
                    hi = mid
                else:
                    lo = mid + 1
            d = 2 * lo
            step = 2 if d < 64 else 4 if d < 128 else 8
            below, above = max(step, d // step * step), -(-d // step) * step
            return min(
                (below, above), key=lambda w: abs(math.log(param_counts(target(w, n_layers)).active / budget))
            )

        # Depth: the multiple of cla_share (>= MIN_LAYERS) whose width puts d_model / n_layers closest to
        # ASPECT_RATIO (d_model / n_layers falls as depth grows, so stop once it is below the ratio).
        first = -(-MIN_LAYERS // cla_share) * cla_share
        best_shape: tuple[int, int, float] | None = None
        for n_layers in range(first, 1024 + 1, cla_share):
            d = width_for(n_layers)
            miss = abs(math.log(d / n_layers / ASPECT_RATIO))
            if best_shape is None or miss < best_shape[2]:
                best_shape = (d, n_layers, miss)
            if d / n_layers < ASPECT_RATIO:
                break
        d_model, n_layers, _ = best_shape
        # Exact fit: the activated count is affine in the activated expert width A.
        a0 = max(8.0, top_k * FFN_MULT * d_model / granularity)
        base = param_counts(shape(d_model, n_layers, a0)).active
        slope = (param_counts(shape(d_model, n_layers, 2 * a0)).active - base) / a0
        cfg = shape(d_model, n_layers, max(1.0, a0 + (budget - base) / slope))
        # the routed width is an integer: keep the nearest of its neighbours (each with its shared split)
        cfg = min(
            (shape(d_model, n_layers, w * top_k / (1.0 - shared_ratio))
             for w in range(max(1, cfg.d_expert - 2), cfg.d_expert + 3)),
            key=lambda c: abs(math.log(param_counts(c).active / budget)),
        )  # fmt: skip
        if n_shared_experts:  # absorb the rounding of d_expert in the shared width
            s0 = cfg.replace(d_shared=1)
            per_unit = param_counts(cfg.replace(d_shared=2)).active - param_counts(s0).active
            cfg = cfg.replace(d_shared=max(1, round(1 + (budget - param_counts(s0).active) / per_unit)))
        return cfg
