import json
import math

import pytest

from moelab.accounting import param_counts
from moelab.config import ModelConfig
from moelab.errors import ConfigError


def test_json_round_trip():
    cfg = ModelConfig(
        n_experts=8,
        top_k=2,
        n_shared_experts=1,
        d_shared=64,
        qk_norm=True,
        cla_share=2,
        overflow="recycle",
        dispatch="dropless",
        tie_embeddings=False,
    )
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


def test_from_dict_rejects_unknown_field():
    with pytest.raises(ConfigError, match="unknown model config field.*n_expert"):
        ModelConfig.from_dict({"n_expert": 4})


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(top_k=3, n_experts=2), "top_k"),
        (dict(n_heads=6, n_kv_heads=4), "n_heads"),
        (dict(n_layers=3, cla_share=2), "n_layers"),
        (dict(d_model=0), "d_model"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(d_expert=0), "d_expert"),
        (dict(n_experts=1, n_shared_experts=1, d_shared=8), "n_shared_experts"),
        (dict(n_experts=4, n_shared_experts=1, d_shared=0), "d_shared"),
        (dict(capacity_factor=0.0), "capacity_factor"),
        (dict(dispatch="ragged"), "dispatch"),
        (dict(overflow="dropless"), "overflow"),
        (dict(dtype="float64"), "dtype"),
        (dict(qk_norm=1), "qk_norm"),
        (dict(aux_loss_coef=-1.0), "aux_loss_coef"),
        (dict(n_layers=2.0), "n_layers"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)


def test_shared_ratio_and_granularity():
    cfg = ModelConfig(d_model=64, n_experts=16, top_k=2, n_shared_experts=1, d_shared=64, d_expert=32)
    assert cfg.shared_ratio == pytest.approx(64 / (64 + 2 * 32))
    assert cfg.granularity == pytest.approx(4 * 64 / 32)
    assert ModelConfig().shared_ratio == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        dict(shared_ratio=1.0),
        dict(shared_ratio=-0.1),
        dict(top_k=9),
        dict(n_experts=1, shared_ratio=0.5),
        dict(granularity=0),
    ],
)
def test_from_budget_rejects(bad):
    args = dict(active_params=1e6, n_experts=8) | bad
    with pytest.raises(ConfigError):
        ModelConfig.from_budget(**args)


GRID_BUDGETS = [1e5, 1e6, 1e7, 1e8, 1e9]
GRID_EXPERTS = [1, 2, 8, 16, 64]
GRID_SHARED = [0.0, 0.25, 0.5, 0.75]
GRID_GRAN = [1, 2, 4, 8]


def test_from_budget_lands_within_2_percent_over_the_grid():
    worst = 0.0
    checked = 0
    for budget in GRID_BUDGETS:
        for n_experts in GRID_EXPERTS:
            for shared in GRID_SHARED if n_experts > 1 else [0.0]:
                for gran in GRID_GRAN:
                    top_k = min(gran, n_experts) if n_experts > 1 else 1  # fine-grained: route to G experts
                    cfg = ModelConfig.from_budget(budget, n_experts, shared, top_k=top_k, granularity=gran)
                    err = abs(param_counts(cfg).active / budget - 1)
                    worst = max(worst, err)
                    assert err <= 0.02, (budget, n_experts, shared, gran, cfg)
                    # the shape follows the request up to rounding
                    assert abs(math.log(cfg.granularity / gran)) < math.log(1.6), (
                        budget,
                        n_experts,
                        gran,
                        cfg,
                    )
                    assert abs(cfg.shared_ratio - shared) < 0.1, (budget, n_experts, shared, cfg)
                    checked += 1
    assert checked > 250 and worst <= 0.02


def test_from_budget_top_k_and_cla():
    cfg = ModelConfig.from_budget(3e6, n_experts=16, top_k=2, granularity=2, kv_group=2, cla_share=2)
    assert cfg.n_layers % 2 == 0 and cfg.cla_share == 2
    assert cfg.n_heads % cfg.n_kv_heads == 0
    assert abs(param_counts(cfg).active / 3e6 - 1) <= 0.02


def test_dense_baseline_has_the_moe_shape():
    dense = ModelConfig.from_budget(1e6, n_experts=1)
    moe = ModelConfig.from_budget(1e6, n_experts=8)
    assert (dense.d_model, dense.n_layers, dense.n_heads) == (moe.d_model, moe.n_layers, moe.n_heads)
    assert abs(dense.d_expert - moe.d_expert) <= 4


def test_from_budget_overrides_pass_through():
    cfg = ModelConfig.from_budget(1e5, n_experts=4, vocab_size=512, overflow="recycle", capacity_factor=2.0)
    assert (cfg.vocab_size, cfg.overflow, cfg.capacity_factor) == (512, "recycle", 2.0)
