"""The memory/time planner and ``moelab plan`` (moelab.parallel.planner, moelab.parallel.cli)."""

from __future__ import annotations

import json
import math

import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from moelab.accounting import kv_cache_bytes_per_token, param_counts, train_flops_per_token
from moelab.cli import main
from moelab.errors import ConfigError
from moelab.parallel.chips import CHIPS, get_chip
from moelab.parallel.mesh import AXES, MeshShape
from moelab.parallel.planner import (
    activation_bytes_per_token_layer,
    best_micro_batch,
    candidate_meshes,
    local_params,
    param_groups,
    plan,
)
from moelab.parallel.remat import POLICIES
from moelab.parallel.rules import PARAM_RULES, spec_entries
from moelab.presets import PRESETS, get_preset, paper_facts

HY = get_preset("hunyuan-large")
STATE_BYTES = 2 + 4 + 8 + 4  # bf16 weights, fp32 master, Adam m and v, fp32 gradients


@pytest.mark.parametrize("name", ["hunyuan-large", "dense-1m", "moe8-1m", "hy8-3m"])
def test_param_groups_sum_to_the_accounting(name):
    cfg = get_preset(name)
    assert sum(g.size for g in param_groups(cfg)) == param_counts(cfg).total_with_embedding
    assert local_params(cfg, MeshShape()) == param_counts(cfg).total_with_embedding
    untied = cfg.replace(tie_embeddings=False)
    assert sum(g.size for g in param_groups(untied)) == param_counts(untied).total_with_embedding


@pytest.mark.parametrize("mesh", ["expert=16,tensor=8", "fsdp=8,expert=16", "data=2,fsdp=4,expert=4,tensor=4",
                                  "fsdp=3,expert=2"])
def test_local_params_against_jax_shard_shape(mesh):
    """Slow obvious reference: JAX's own NamedSharding.shard_shape, array by array."""
    m = MeshShape.parse(mesh)
    amesh = AbstractMesh(m.as_tuple(), AXES)
    expect = 0
    for g in param_groups(HY):
        spec = PartitionSpec(*spec_entries(g.shape, g.axes, m.as_dict(), PARAM_RULES))
        expect += math.prod(NamedSharding(amesh, spec).shard_shape(g.shape)) * g.count
    assert local_params(HY, m) == expect
    assert local_params(HY, m) >= param_counts(HY).total_with_embedding / m.size


def test_hunyuan_large_on_64_h100_does_not_fit_and_says_so():
    chip = get_chip("h100-80gb")
    p = plan(HY, chip, 64, preset="hunyuan-large")
    counts = param_counts(HY)
    assert (p.total_params_with_embedding, p.active_params_with_embedding) == (
        counts.total_with_embedding, counts.active_with_embedding)
    assert round(p.total_params_with_embedding / 1e9) == 389  # the paper's 389B total
    # even perfectly sharded, the training state alone is above the usable HBM of 64 chips
    assert STATE_BYTES * counts.total_with_embedding / 64 > 0.9 * chip.hbm_bytes
    assert not p.fits and p.memory_total > p.usable_bytes
    assert p.min_chips_to_fit == 128 and plan(HY, chip, 128).fits
    assert not plan(HY, chip, 64, search_min_chips=False).fits


@pytest.mark.parametrize("chip,chips", [("h100-80gb", 128), ("h200", 64), ("tpu-v5p", 256)])
def test_plan_internal_consistency(chip, chips):
    c = get_chip(chip)
    p = plan(HY, c, chips, seq=4096, mfu=0.4)
    m = MeshShape.parse(p.mesh)
    assert m.size == chips and p.batch % m.batch_shards == 0
    assert p.micro_batch * p.grad_accum * m.batch_shards == p.batch
    assert p.fits == (p.memory_total <= 0.9 * c.hbm_bytes)
    assert p.memory["fp32 master weights"] == 4 * local_params(HY, m)
    assert p.flops_per_step == pytest.approx(train_flops_per_token(HY, 4096) * p.batch * 4096)
    assert p.step_time_s == pytest.approx(p.flops_per_step / (chips * c.peak_bf16_flops * 0.4))
    assert p.days_to_train * p.tokens_per_day == pytest.approx(paper_facts("hunyuan-large").train_tokens)
    # KV cache: Hunyuan-Large's table (GQA + CLA, bf16): 2 * n_kv_heads * head_dim * n_layers / 2 * 2 bytes
    assert p.kv_cache_bytes_per_token == kv_cache_bytes_per_token(HY) == 2 * 8 * 80 * 32 * 2
    assert p.kv_cache_bytes_per_256k_sequence == p.kv_cache_bytes_per_token * 262144
    if p.fits:  # the chosen micro-batch is the largest that fits: doubling it would not
        assert p.grad_accum == 1 or plan(HY, c, chips, mesh=m, batch=p.batch).micro_batch == p.micro_batch


def test_recommended_mesh_is_the_preferred_fitting_one():
    c = get_chip("h200")
    p = plan(HY, c, 128)
    fitting = [m for m in candidate_meshes(HY, 128, c, p.batch)
               if best_micro_batch(HY, m, 4096, p.batch // m.batch_shards, "full", 0.9 * c.hbm_bytes)[2]]
    best = min(fitting, key=lambda m: (m.tensor, -m.expert, -m.data))
    assert p.fits and p.mesh == str(best)
    for m in candidate_meshes(HY, 128, c, p.batch):
        assert HY.n_experts % m.expert == 0 and HY.n_heads % m.tensor == 0 and m.tensor <= c.max_tensor


def test_more_chips_never_need_more_memory_per_chip_for_states():
    c = get_chip("tpu-v5p")
    last = math.inf
    for n in (32, 64, 128, 256, 512):
        p = plan(HY, c, n, batch=1024)
        states = sum(v for k, v in p.memory.items() if "weights" in k or "Adam" in k or "gradients" in k)
        assert states <= last
        last = states


def test_activation_model_orders_policies_and_tensor_split():
    for cfg in (HY, get_preset("dense-1m")):
        none, minimal, full = (activation_bytes_per_token_layer(cfg, 1, r) for r in POLICIES)
        assert none > minimal > full == 2 * cfg.d_model
        assert activation_bytes_per_token_layer(cfg, 8, "none") < none
    with pytest.raises(ConfigError, match="remat must be one of"):
        activation_bytes_per_token_layer(HY, 1, "some")


def test_plan_errors():
    c = get_chip("h100-80gb")
    with pytest.raises(ConfigError, match="has 8 chips"):
        plan(HY, c, 64, mesh=MeshShape(expert=8))
    with pytest.raises(ConfigError, match="multiple of data"):
        plan(HY, c, 8, mesh=MeshShape(expert=8), batch=12)
    with pytest.raises(ConfigError, match="no mesh of 7 chips"):
        plan(HY, c, 7, batch=5)
    with pytest.raises(ConfigError, match="chip must be one of"):
        get_chip("a100")
    assert set(CHIPS) == {"h100-80gb", "h200", "tpu-v5p"}


def test_cli_plan_text_and_json(capsys):
    assert main(["plan", "--preset", "hunyuan-large", "--chips", "64", "--chip", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    counts = param_counts(HY)
    assert f"total {counts.total_with_embedding / 1e9:.1f}B" in out
    assert f"activated {counts.active_with_embedding / 1e9:.1f}B" in out
    assert "DOES NOT FIT" in out and "128" in out and "81,920 bytes/token" in out
    assert main(["plan", "--preset", "hunyuan-large", "--chips", "256", "--chip", "tpu-v5p", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is True and data["chips"] == 256 and data["memory_total"] <= data["usable_bytes"]


def test_cli_plan_config_file(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": PRESETS["hy8-1m"].to_dict(), "train": {}}))
    argv = ["plan", "--config", str(path), "--chips", "8", "--chip", "h200", "--seq", "256"]
    assert main([*argv, "--tokens", "1e9"]) == 0
    assert "FITS" in capsys.readouterr().out
    # a config that is no paper preset has no published training tokens to default to
    assert main(argv) == 2
    assert "--tokens" in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["--preset", "nope", "--chips", "8", "--chip", "h200"], "unknown preset"),
    (["--preset", "hunyuan-large", "--chips", "0", "--chip", "h200"], "chips must be"),
    (["--preset", "hunyuan-large", "--chips", "8", "--chip", "h200", "--mesh", "pipe=8"], "mesh must look"),
    (["--preset", "hunyuan-large", "--chips", "8", "--chip", "h200", "--mfu", "2"], "mfu must be"),
    (["--config", "/nonexistent.json", "--chips", "8", "--chip", "h200"], "cannot read"),
])
def test_cli_plan_bad_input_is_one_line_exit_2(argv, match, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_cli_plan_argparse_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--preset", "hunyuan-large", "--chips", "8", "--chip", "a100"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_gathered_layer_weights():
    """After the FSDP all-gather a layer keeps only the expert split of routed experts (and of the router's
    experts axis) and the tensor split; everything else is whole."""
    from moelab.parallel.planner import gathered_layer_params

    c = param_counts(HY)
    L = HY.n_layers
    routed, router = c.routed_experts / L, c.router / L
    norms = (c.norms - HY.d_model) / L  # the final norm is not per layer
    dense = (c.total - c.routed_experts - c.router - HY.d_model) / L - norms
    assert gathered_layer_params(HY, MeshShape(fsdp=8, expert=16)) == pytest.approx(
        (routed + router) / 16 + dense + norms, abs=1)
    # tensor 8 divides a dimension of every matrix of hunyuan-large (heads 80, kv_heads 8, mlp 18304); the
    # router's experts axis is not a tensor axis
    assert gathered_layer_params(HY, MeshShape(fsdp=2, expert=4, tensor=8)) == pytest.approx(
        routed / 32 + router / 4 + dense / 8 + norms, abs=1)
