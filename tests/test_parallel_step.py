"""The production train step (``moelab.train.step.make_train_step``) on a mesh equals the same step on one
device (8 simulated CPU devices), and the full-size Hunyuan-Large built abstractly with its shardings holds
the planner's per-chip parameter count."""

from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh

from moelab.config import ModelConfig
from moelab.model import Transformer
from moelab.model.dispatch.capacity import BUFFER_AXES, capacity_of
from moelab.parallel.mesh import AXES, MeshShape, make_mesh
from moelab.parallel.placement import Placement
from moelab.parallel.planner import local_params
from moelab.parallel.rules import ACTIVATION_RULES, local_shape
from moelab.parallel.shard import abstract_state, per_device_params
from moelab.presets import get_preset
from moelab.train.step import make_train_step

# Hunyuan-Large's structure, reduced: 1 shared + 4 routed experts, top-1, recycle overflow, GQA (4 query /
# 2 KV heads), cross-layer K/V pairs, qk-norm, tied embeddings.
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8, cla_share=2,
                  qk_norm=True, max_seq_len=32, n_experts=4, top_k=1, n_shared_experts=1, d_expert=32,
                  d_shared=32, capacity_factor=1.0, overflow="recycle")
# Tolerances in float32 units in the last place (ulp): a mesh changes only the order of the sums (over tokens
# split across devices, over d_model split by fsdp/tensor), so results differ by rounding and nothing else.
# Measured on 8 simulated CPU devices: losses and router losses 0 or 1 ulp apart (loss 4.16: 4.8e-7), the
# gradients 2.6e-8 apart at most (3.5 ulp of the largest gradient, 0.069), hence their norm 3 ulp (1.8e-7 at
# 0.78), AdamW's new parameters 7.1e-8 (0.6 ulp of the largest parameter, 1.0). The bounds are about 2x those:
# a real error (a wrong reduction, a missing all-reduce, a token routed differently) is orders larger.
SCALAR_ULPS, GRAD_ULPS, PARAM_ULPS = 2, 8, 2  # losses; gradients and their norm; parameters
STEP, SEED = 3, 7  # the router key of the step is fold_in(key(SEED + 1), STEP)


def _batch():
    return np.asarray(jax.random.randint(jax.random.key(3), (8, 17), 0, CFG.vocab_size, jnp.int32))


def _placed(mesh, tx):
    """(graphdef, state = (params, opt_state, first_bad), rest, placement) of a fresh model on ``mesh``."""
    placement = Placement(mesh)
    graphdef, params, rest = placement.init_model(lambda: Transformer(CFG, rngs=nnx.Rngs(0)))
    state = (params, placement.init_opt_state(tx, params), placement.scalar(np.int32(-1)))
    return graphdef, state, rest, placement


@contextlib.contextmanager
def _fresh_compilation():
    """Compile without the persistent cache: its keys leave out op metadata, so a cached executable could
    carry the op names of another version of the code."""
    old = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", old)


def _step(mesh, tx, lr, compiled_text=None):
    """One production step on ``mesh`` (None: one device): (params before, params after, metrics)."""
    graphdef, state, rest, placement = _placed(mesh, tx)
    before = jax.tree.map(jnp.copy, state[0])  # the step donates its state
    step = make_train_step(graphdef, tx, CFG, mesh=mesh, state_shardings=placement.shardings(state))
    args = (*state, rest, placement.batch(_batch()), np.int32(STEP), np.float32(lr), np.int32(SEED))
    if compiled_text is None:
        compiled = step.lower(*args).compile()
    else:
        with _fresh_compilation():
            compiled = step.lower(*args).compile()
        compiled_text.append(compiled.as_text())
    after, _, first_bad, _, metrics = compiled(*args)
    assert int(first_bad) == -1
    return before, after, jax.device_get(metrics)


_INSTRUCTION = re.compile(r"= [a-z0-9]+\[([0-9,]*)\]\S* [a-z-]+\(.*op_name=\"([^\"]*)\"")


def _forward_shapes(hlo: str, op: str) -> set[tuple[int, ...]]:
    """Per-device shapes of the instructions the partitioned HLO attributes to the forward pass of ``op``
    (a jax op name such as ``expert_buffers/ecd,edf->ecf``)."""
    shapes = set()
    for m in _INSTRUCTION.finditer(hlo):
        dims, name = m.groups()
        if f"/{op}/" in name and "transpose(" not in name:  # transpose(...): the backward pass
            shapes.add(tuple(int(d) for d in dims.split(",") if d))
    return shapes


def _ulp(x) -> float:
    """One float32 unit in the last place at |x|."""
    return float(np.spacing(np.float32(abs(float(x)))))


def _max_abs(tree) -> float:
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


def _grads(before, after):
    """SGD with learning rate 1 moves every parameter by exactly minus its gradient."""
    return jax.tree.map(lambda b, a: b - a, before, after)


@pytest.fixture(scope="module")
def reference():
    return _step(None, optax.sgd(1.0), 1.0)


@pytest.mark.parametrize("mesh_text", ["data=2,expert=4", "fsdp=2,expert=2,tensor=2"])
def test_sharded_step_gradients_equal_unsharded(mesh_text, reference):
    before0, after0, m0 = reference
    mesh = make_mesh(mesh_text)
    text = []
    before, after, m = _step(mesh, optax.sgd(1.0), 1.0, text)
    assert _max_diff(before, before0) <= 1e-7  # created on its shardings: the same values (jit rounding)
    # the parameters really are split: routed experts over `expert`
    w = before["blocks"]["layer_0"]["mlp"]["w_gate"].get_value()
    shape = MeshShape.parse(mesh_text)
    n_blocks = CFG.n_layers // CFG.cla_share
    assert w.addressable_shards[0].data.shape == (n_blocks, CFG.n_experts // shape.expert,
                                                  CFG.d_model // shape.fsdp, CFG.d_expert // shape.tensor)
    if shape.expert > 1:  # expert parallelism: XLA moves tokens between expert shards by all-to-all
        assert "all-to-all" in text[0]
    # The dispatch buffer [experts, capacity, embed] is laid out as the activation rules say (the model pins
    # it with moelab.model.hooks.constrain): in the compiled per-device program the expert products run on
    # n_experts / expert experts and capacity / (data x fsdp) slots. Without the constraint XLA split the
    # experts alike but kept all the slots on every device (seen when this test was written).
    n_tokens = _batch().shape[0] * (_batch().shape[1] - 1)
    cap = capacity_of(n_tokens, CFG.top_k, CFG.n_experts, CFG.capacity_factor)
    e_local, c_local, _ = local_shape((CFG.n_experts, cap, CFG.d_model), BUFFER_AXES, shape.as_dict(),
                                      ACTIVATION_RULES)
    assert (e_local, c_local) == (CFG.n_experts // shape.expert, cap // (shape.data * shape.fsdp))
    shapes = {s for s in _forward_shapes(text[0], "expert_buffers/ecd,edf->ecf") if len(s) == 3}
    assert shapes and all(s[0] == e_local for s in shapes), shapes
    assert any(s[:2] == (e_local, c_local) for s in shapes), shapes
    for name in ("loss", "total_loss", "aux_loss", "z_loss", "grad_norm", "dropped_frac", "recycled_frac"):
        ulps = GRAD_ULPS if name == "grad_norm" else SCALAR_ULPS
        assert abs(float(m[name]) - float(m0[name])) <= ulps * _ulp(m0[name]), name
    np.testing.assert_array_equal(m["load"], m0["load"])  # counts of tokens per expert: the same routing
    assert float(m0["aux_loss"]) > 0 and float(m0["z_loss"]) > 0  # router losses are live, not zeros
    grads, grads0 = _grads(before, after), _grads(before0, after0)
    assert _max_abs(grads0) > 1e-3  # non-trivial gradients
    assert _max_diff(grads, grads0) <= GRAD_ULPS * _ulp(_max_abs(grads0))
    w_new = after["blocks"]["layer_0"]["mlp"]["w_gate"].get_value()
    assert w_new.sharding.is_equivalent_to(w.sharding, w.ndim)  # the state stays on its shardings


def test_sharded_adamw_step_equals_unsharded():
    # Adam's first update is lr * g / (|g| + eps): near g = 0 its slope is lr / eps, so with the default eps
    # (1e-8) float32 noise of 1e-9 in a vanishing gradient moves a parameter by up to ~lr. eps = 1e-3 bounds
    # the slope (lr / eps = 10) so that gradients equal to 1e-7 give parameters equal to 1e-6, and the
    # comparison below tests the sharded optimiser, not the conditioning of Adam at g ~ 0.
    tx = optax.adamw(1.0, eps=1e-3, weight_decay=0.1)  # the step multiplies by its lr argument
    before_ref, new_ref, m_ref = _step(None, tx, 1e-2)

    mesh = make_mesh("fsdp=2,expert=2,tensor=2")
    _, (params, opt_state, _), _, placement = _placed(mesh, tx)
    mu = opt_state[0].mu["blocks"]["layer_0"]["mlp"]["w_down"].get_value()
    w_down = params["blocks"]["layer_0"]["mlp"]["w_down"].get_value()
    assert mu.sharding.is_equivalent_to(w_down.sharding, 4)  # Adam's moments sharded like the parameters
    assert not w_down.sharding.is_fully_replicated
    _, new, metrics = _step(mesh, tx, 1e-2)
    assert abs(float(metrics["loss"]) - float(m_ref["loss"])) <= SCALAR_ULPS * _ulp(m_ref["loss"])
    gn, gn_ref = float(metrics["grad_norm"]), float(m_ref["grad_norm"])
    assert abs(gn - gn_ref) <= GRAD_ULPS * _ulp(gn_ref)
    assert _max_diff(new, new_ref) <= PARAM_ULPS * _ulp(_max_abs(new_ref))
    assert _max_diff(new, before_ref) > 5e-4  # the step moved the parameters


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
