import pytest

from moelab.accounting import (
    kv_cache_bytes_per_token,
    mha_equivalent,
    param_counts,
    train_flops_per_token,
)
from moelab.config import ModelConfig
from moelab.presets import get_preset, paper_facts


def test_hunyuan_large_totals():
    cfg = get_preset("hunyuan-large")
    counts = param_counts(cfg)
    assert counts.total_with_embedding == pytest.approx(389e9, rel=0.01)
    assert counts.active_with_embedding == pytest.approx(52e9, rel=0.02)
    assert counts.total == pytest.approx(389e9, rel=0.01)


def test_hunyuan_kv_cache_is_5_percent_of_mha():
    cfg = get_preset("hunyuan-large")
    assert kv_cache_bytes_per_token(cfg) == 81_920
    mha = kv_cache_bytes_per_token(mha_equivalent(cfg))
    assert mha == 4 * 80 * 80 * 64  # the paper's 4·nh·dh·l
    assert kv_cache_bytes_per_token(cfg) / mha == pytest.approx(0.05)


def test_kv_cache_formulas():
    base = dict(n_layers=4, n_heads=8, head_dim=16, d_model=64)
    nh, dh, l, ng = 8, 16, 4, 2
    assert kv_cache_bytes_per_token(ModelConfig(**base, n_kv_heads=8)) == 4 * nh * dh * l
    assert kv_cache_bytes_per_token(ModelConfig(**base, n_kv_heads=2)) == 4 * ng * dh * l
    assert kv_cache_bytes_per_token(ModelConfig(**base, n_kv_heads=8, cla_share=2)) == 2 * nh * dh * l
    assert kv_cache_bytes_per_token(ModelConfig(**base, n_kv_heads=2, cla_share=2)) == 2 * ng * dh * l
    assert kv_cache_bytes_per_token(ModelConfig(**base, n_kv_heads=2), bytes_per_value=4) == 8 * ng * dh * l


def test_active_equals_total_for_dense_and_differs_for_moe():
    dense = ModelConfig()
    c = param_counts(dense)
    assert c.active == c.total and c.router == 0
    moe = ModelConfig(n_experts=8, top_k=2)
    m = param_counts(moe)
    assert m.total - m.active == 6 * 3 * moe.d_model * moe.d_expert * moe.n_layers


def test_flops_per_token_is_6n_plus_attention():
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=2, head_dim=32, vocab_size=256)
    n = param_counts(cfg).active + 64 * 256
    assert train_flops_per_token(cfg, 128) == 6 * n + 12 * 2 * 128 * 64
    # attention term grows linearly with the context
    assert train_flops_per_token(cfg, 256) - train_flops_per_token(cfg, 128) == 12 * 2 * 128 * 64


def test_hunyuan_flops_formula_is_comparable():
    cfg = get_preset("hunyuan-large")
    ours = train_flops_per_token(cfg, 4096)
    n = param_counts(cfg).active
    theirs = paper_facts("hunyuan-large").cost_per_token(n)
    assert 6 * n < ours < theirs < 10 * n
