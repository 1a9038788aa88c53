import pytest

from moelab.accounting import param_counts
from moelab.config import ModelConfig
from moelab.errors import ConfigError
from moelab.presets import LADDER, PRESETS, get_preset


def test_unknown_preset_lists_names():
    with pytest.raises(ConfigError, match="hunyuan-large"):
        get_preset("nope")


def test_ladder_spans_1e5_to_1e7_on_bytes():
    for name, cfg in PRESETS.items():
        if name == "hunyuan-large":
            continue
        size = name.split("-")[1]
        assert cfg.vocab_size == 256
        assert param_counts(cfg).active == pytest.approx(LADDER[size], rel=0.02)
    assert min(LADDER.values()) <= 1e5 and max(LADDER.values()) >= 1e7


def test_hunyuan_published_config():
    cfg = get_preset("hunyuan-large")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (64, 6400, 80, 8, 80)
    assert (cfg.n_experts, cfg.n_shared_experts, cfg.top_k, cfg.d_expert, cfg.d_shared) == (
        16,
        1,
        1,
        18304,
        18304,
    )
    assert cfg.cla_share == 2 and cfg.qk_norm and cfg.tie_embeddings and cfg.vocab_size == 128512
    assert cfg.shared_ratio == 0.5
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
