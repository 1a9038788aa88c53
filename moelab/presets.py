"""Named model configurations: a CPU ladder (about 1e5 to 1e7 activated parameters, byte vocabulary) and
``hunyuan-large`` (Tencent 2024, arXiv 2411.02265, tab. 1).

``get_preset(name)`` returns a ``ModelConfig``; ``PRESETS`` maps every name to its config. The ladder is the
family rule ``ModelConfig.from_budget`` evaluated at fixed points, so its members are the same models a
sweep over the same budgets trains:

- ``dense-<size>``: n_experts 1 (the baseline);
- ``moe8-<size>``: 8 experts, top-1, granularity 1, no shared expert (classic Switch-style);
- ``hy8-<size>``: 8 routed experts, top-1, one shared expert, shared_ratio 0.5 (Hunyuan-Large's recipe),
  recycle routing.
"""

from __future__ import annotations

from moelab.config import ModelConfig
from moelab.errors import ConfigError

#: Activated non-embedding parameter budgets of the CPU ladder.
LADDER = {"100k": 1e5, "300k": 3e5, "1m": 1e6, "3m": 3e6, "10m": 1e7}

HUNYUAN_LARGE = ModelConfig(
    vocab_size=128512,
    d_model=6400,
    n_layers=64,
    n_heads=80,
    n_kv_heads=8,
    head_dim=80,
    cla_share=2,
    qk_norm=True,
    rope_theta=10000.0,
    max_seq_len=4096,  # pretraining context; the 32K/256K extension (dynamic NTK RoPE) is not modelled
    n_experts=16,
    top_k=1,
    n_shared_experts=1,
    d_expert=18304,
    d_shared=18304,
    capacity_factor=1.25,  # not published; the common default
    dispatch="capacity",
    overflow="recycle",
    renormalize=False,
    tie_embeddings=True,
    norm_eps=1e-5,
    dtype="bfloat16",
    param_dtype="float32",
)


def _ladder() -> dict[str, ModelConfig]:
    presets: dict[str, ModelConfig] = {}
    for size, budget in LADDER.items():
        presets[f"dense-{size}"] = ModelConfig.from_budget(budget, n_experts=1)
        presets[f"moe8-{size}"] = ModelConfig.from_budget(budget, n_experts=8, top_k=1)
        presets[f"hy8-{size}"] = ModelConfig.from_budget(
            budget, n_experts=8, shared_ratio=0.5, overflow="recycle"
        )
    return presets


PRESETS: dict[str, ModelConfig] = {**_ladder(), "hunyuan-large": HUNYUAN_LARGE}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (ConfigError listing the names otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}") from None
