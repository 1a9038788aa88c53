"""The sharded training step equals the unsharded one (8 simulated CPU devices), and the full-size
Hunyuan-Large built abstractly with its shardings holds the planner's per-chip parameter count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh

from moelab.config import ModelConfig
from moelab.model import Transformer
from moelab.parallel.mesh import AXES, MeshShape, make_mesh
from moelab.parallel.planner import local_params
from moelab.parallel.shard import abstract_state, per_device_params
from moelab.parallel.step import (
    Sharded,
    init_opt_state,
    make_grad_fn,
    make_train_step,
    shard_model,
)
from moelab.presets import get_preset

# Hunyuan-Large's structure, reduced: 1 shared + 4 routed experts, top-1, recycle overflow, GQA (4 query /
# 2 KV heads), cross-layer K/V pairs, qk-norm, tied embeddings.
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8, cla_share=2,
                  qk_norm=True, max_seq_len=32, n_experts=4, top_k=1, n_shared_experts=1, d_expert=32,
                  d_shared=32, capacity_factor=1.0, overflow="recycle")
COEFS = dict(aux_loss_coef=CFG.aux_loss_coef, z_loss_coef=CFG.z_loss_coef)
TOL = 1e-5


def _batch():
    return jax.random.randint(jax.random.key(3), (8, 17), 0, CFG.vocab_size, jnp.int32)


def _unsharded():
    g, p, r = nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
    return Sharded(g, p, r, None, None, None)


@pytest.fixture(scope="module")
def reference():
    ref = _unsharded()
    loss, parts, grads = make_grad_fn(ref, **COEFS)(ref.params, ref.rest, _batch(), jax.random.key(5))
    return float(loss), [float(x) for x in parts], grads


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


@pytest.mark.parametrize("mesh_text", ["data=2,expert=4", "fsdp=2,expert=2,tensor=2"])
def test_sharded_loss_and_gradients_equal_unsharded(mesh_text, reference):
    loss0, parts0, grads0 = reference
    mesh = make_mesh(mesh_text)
    sh = shard_model(Transformer(CFG, rngs=nnx.Rngs(0)), mesh)
    # the parameters really are split: routed experts over `expert`
    w = sh.params["blocks"]["layer_0"]["mlp"]["w_gate"].get_value()
    m = MeshShape.parse(mesh_text)
    n_blocks = CFG.n_layers // CFG.cla_share
    assert w.addressable_shards[0].data.shape == (n_blocks, CFG.n_experts // m.expert,
                                                  CFG.d_model // m.fsdp, CFG.d_expert // m.tensor)
    args = (sh.params, sh.rest, _batch(), jax.random.key(5))
    compiled = make_grad_fn(sh, **COEFS).lower(*args).compile()
    if m.expert > 1:  # expert parallelism: XLA moves tokens between expert shards by all-to-all
        assert "all-to-all" in compiled.as_text()
    loss, parts, grads = compiled(*args)
    assert abs(float(loss) - loss0) <= TOL * max(1.0, abs(loss0))
    np.testing.assert_allclose([float(x) for x in parts], parts0, rtol=TOL, atol=TOL)
    assert parts0[1] > 0 and parts0[2] > 0  # aux and z losses are live, not zeros
    assert _max_diff(grads, grads0) <= TOL
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads0)) > 1e-3  # non-trivial gradients
    gw = grads["blocks"]["layer_0"]["mlp"]["w_gate"].get_value()
    assert gw.sharding.is_equivalent_to(w.sharding, gw.ndim)  # gradients stay sharded like the parameters


def test_sharded_adamw_step_equals_unsharded():
    # Adam's first update is lr * g / (|g| + eps): near g = 0 its slope is lr / eps, so with the default eps
    # (1e-8) float32 noise of 1e-9 in a vanishing gradient moves a parameter by up to ~lr. eps = 1e-3 bounds
    # the slope (lr / eps = 10) so that gradients equal to 1e-7 give parameters equal to 1e-6, and the
    # comparison below tests the sharded optimiser, not the conditioning of Adam at g ~ 0.
    tx = optax.adamw(1e-2, eps=1e-3, weight_decay=0.1)
    ref = _unsharded()
    ref_state = init_opt_state(tx, ref)
    new_ref, _, m_ref = make_train_step(ref, tx, **COEFS)(ref.params, ref.rest, ref_state, _batch(), None)

    mesh = make_mesh("fsdp=2,expert=2,tensor=2")
    sh = shard_model(Transformer(CFG, rngs=nnx.Rngs(0)), mesh)
    state = init_opt_state(tx, sh)
    mu = state[0].mu["blocks"]["layer_0"]["mlp"]["w_down"].get_value()
    w_down_sharding = sh.param_shardings["blocks"]["layer_0"]["mlp"]["w_down"].get_value()
    assert mu.sharding.is_equivalent_to(w_down_sharding, 4)
    new, state, metrics = make_train_step(sh, tx, **COEFS)(sh.params, sh.rest, state, _batch(), None)
    assert abs(float(metrics["loss"]) - float(m_ref["loss"])) <= TOL
    assert abs(float(metrics["grad_norm"]) - float(m_ref["grad_norm"])) <= TOL
    assert _max_diff(new, new_ref) <= TOL
    assert _max_diff(new, _unsharded().params) > 5e-4  # the step moved the parameters


@pytest.mark.parametrize(
    "mesh_text",
    ["fsdp=8,expert=16", "expert=8,tensor=8", "data=2,fsdp=4,expert=4,tensor=4", "fsdp=3,expert=2"],
)
def test_full_size_abstract_model_matches_planner(mesh_text):
    """nnx.eval_shape of the real Transformer for hunyuan-large (nothing allocated), sharded by the rules on
    an abstract mesh: the per-device parameter count equals the planner's analytic figure."""
    cfg = get_preset("hunyuan-large")
    _, state = abstract_state(cfg)
    m = MeshShape.parse(mesh_text)
    amesh = AbstractMesh(m.as_tuple(), AXES)
    assert per_device_params(state, amesh) == local_params(cfg, m)
    assert per_device_params(state, AbstractMesh((1, 1, 1, 1), AXES)) == local_params(cfg, MeshShape())
