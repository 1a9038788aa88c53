import json
import math

import pytest

from moelab.accounting import param_counts
from moelab.config import FFN_MULT, ModelConfig
from moelab.errors import ConfigError
from moelab.model.dispatch.capacity import capacity_of
from moelab.presets import get_preset


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
        (dict(d_model=10**205), "d_model"),  # the fuzzer's: overflowed float() in the FLOP count
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
    assert cfg.granularity == pytest.approx(8 / 3 * 64 / 32)
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
                    # the shape follows the request up to rounding; a shared expert takes r of the activated
                    # width, so each routed expert is narrower by (1 - r)
                    assert abs(math.log(cfg.granularity * (1 - shared) / gran)) < math.log(1.6), (
                        budget,
                        n_experts,
                        shared,
                        gran,
                        cfg,
                    )
                    assert cfg.n_layers >= 2
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


@pytest.mark.parametrize("budget", [3e4, 1e5, 1e6, 1e8])
def test_shared_ratio_splits_a_fixed_activated_width(budget):
    """DeepSeekMoE: at a fixed budget, top_k and granularity, r moves width between shared and routed experts
    and leaves d_model and depth alone; the activated expert width stays put."""
    shapes = set()
    for r in (0.0, 0.25, 0.5, 0.75):
        cfg = ModelConfig.from_budget(budget, n_experts=8, shared_ratio=r, top_k=2, granularity=2)
        shapes.add((cfg.d_model, cfg.n_layers, cfg.n_heads))
        assert cfg.shared_ratio == pytest.approx(r, abs=0.03)
        width = cfg.top_k * cfg.d_expert + cfg.n_shared_experts * cfg.d_shared
        assert width == pytest.approx(cfg.top_k * FFN_MULT * cfg.d_model / 2, rel=0.06)
    assert len(shapes) == 1, shapes


def test_every_family_member_has_at_least_two_layers_and_a_sane_aspect_ratio():
    for budget in (1e3, 1e4, 1e5, 3e5, 1e6, 1e7, 1e9):
        for e in (1, 8):
            cfg = ModelConfig.from_budget(budget, n_experts=e)
            assert cfg.n_layers >= 2
            if budget >= 3e5:  # the regime where Kaplan et al. find the aspect ratio does not matter
                assert 20 <= cfg.aspect_ratio <= 200, (budget, cfg.d_model, cfg.n_layers)


def test_granularity_is_measured_against_the_family_dense_width():
    """Hunyuan-Large's experts are ordinary full-width SwiGLUs: G = 1 within 0.1 (8/3·6400 / 18304)."""
    assert get_preset("hunyuan-large").granularity == pytest.approx(1.0, abs=0.1)
    dense = ModelConfig.from_budget(1e6)
    assert dense.granularity == pytest.approx(1.0, abs=0.05)
    hy = get_preset("hy8-1m")  # Hunyuan's shape in the family: shared and routed expert of equal width
    assert hy.d_shared == pytest.approx(hy.d_expert, rel=0.05) and hy.granularity == pytest.approx(1, abs=0.1)


def test_dropless_twin_serves_every_assignment():
    cfg = ModelConfig.from_budget(1e5, n_experts=8, top_k=2, capacity_factor=1.25, overflow="recycle")
    twin = cfg.dropless()
    assert capacity_of(1000, twin.top_k, twin.n_experts, twin.capacity_factor) == 1000
    assert twin.overflow == "drop" and param_counts(twin) == param_counts(cfg)
    assert ModelConfig.from_budget(1e5).dropless() == ModelConfig.from_budget(1e5)
