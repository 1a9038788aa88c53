"""Router recipes against slow per-token references (outputs and gradients, float32): softmax and sigmoid
scores, the selection bias of auxiliary-loss-free balancing and its update rule, the sequence-wise balance
loss, expert-choice routing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moelab.model import router_reference as ref
from moelab.model.dispatch import expert_choice
from moelab.model.router import route, update_bias

T, B, D, E, F = 4, 4, 8, 4, 12  # positions, sequences, width, experts, expert width
N = T * B
TOL = 1e-5


def _router_inputs(seed):
    ks = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(ks[0], (N, D))
    w = jax.random.normal(ks[1], (D, E)) * 0.7
    proj = jax.random.normal(ks[2], (N, 3))
    bias = jax.random.normal(ks[3], (E,)) * 0.3
    return x, w, proj, bias


ROUTER_CASES = [
    # (score, top_k, renormalize, with bias)
    ("softmax", 1, False, False),
    ("softmax", 2, True, False),
    ("softmax", 2, False, True),
    ("sigmoid", 2, False, False),
    ("sigmoid", 3, False, True),
]


@pytest.mark.parametrize("score, k, renorm, with_bias", ROUTER_CASES)
def test_route_matches_the_per_token_reference(score, k, renorm, with_bias):
    x, w, proj, bias = _router_inputs(k + 10 * with_bias)
    bias = bias if with_bias else None
    choice = ref.choose_experts(x, w, k, score, bias)
    coef = jnp.array([0.3, 0.2, 0.7])

    def fast(x, w):
        r = route(x, w, k, renorm, score=score, bias=bias, n_seqs=B)
        return jnp.sum(r.top_w * proj[:, :k]) + coef @ jnp.stack([r.aux_loss, r.z_loss, r.seq_aux_loss]), r

    def slow(x, w):
        top_w, aux, z, load, seq = ref.route(x, w, choice, renorm, score, n_seqs=B)
        return jnp.sum(top_w * proj[:, :k]) + coef @ jnp.stack([aux, z, seq]), (top_w, aux, z, load, seq)

    (_, r), g = jax.value_and_grad(fast, argnums=(0, 1), has_aux=True)(x, w)
    (_, (top_w, aux, z, load, seq)), g_ref = jax.value_and_grad(slow, argnums=(0, 1), has_aux=True)(x, w)
    assert np.array_equal(np.asarray(r.top_idx), choice)
    np.testing.assert_allclose(r.top_w, top_w, atol=TOL)
    for a, b in ((r.aux_loss, aux), (r.z_loss, z), (r.seq_aux_loss, seq)):
        assert float(a) == pytest.approx(float(b), rel=1e-5)
    np.testing.assert_allclose(r.load, load, atol=1e-7)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=TOL)
    if score == "sigmoid" or renorm:
        np.testing.assert_allclose(np.sum(r.top_w, -1), 1.0, rtol=1e-6)  # normalised over the chosen


def test_bias_changes_the_choice_not_the_gate_weights():
    x, w, _, _ = _router_inputs(0)
    for score in ("softmax", "sigmoid"):
        plain = route(x, w, 2, False, score=score)
        pushed = route(x, w, 2, False, score=score, bias=jnp.array([10.0, 0, 0, 0]))
        assert np.all(np.asarray(pushed.top_idx)[:, 0] == 0)  # expert 0 wins every choice
        assert float(pushed.load[0]) == pytest.approx(0.5)
        s = jax.nn.softmax(x @ w) if score == "softmax" else jax.nn.sigmoid(x @ w)
        expect = jnp.take_along_axis(s, pushed.top_idx, -1)
        if score == "sigmoid":
            expect = expect / expect.sum(-1, keepdims=True)
        np.testing.assert_allclose(pushed.top_w, expect, rtol=1e-6)  # unbiased scores
        assert not np.array_equal(plain.top_idx, pushed.top_idx)
        # no gradient reaches the bias through the routing
        g = jax.grad(lambda b, s=score: route(x, w, 2, False, score=s, bias=b).top_w.sum())(jnp.zeros(E))
        assert float(jnp.max(jnp.abs(g))) == 0.0


def test_bias_update_on_a_hand_computed_sequence_of_loads():
    """gamma = 0.001 (DeepSeek-V3); an expert above its layer's mean load loses gamma, below gains gamma."""
    loads = [
        [0.40, 0.30, 0.20, 0.10],  # mean 0.25: experts 0, 1 over; 2, 3 under
        [0.25, 0.25, 0.25, 0.25],  # balanced: no change
        [0.10, 0.20, 0.30, 0.40],  # reversed: back to zero
        [0.50, 0.50, 0.00, 0.00],
        [0.00, 0.60, 0.20, 0.20],  # mean 0.25: only expert 1 over
    ]
    expected = [
        [-0.001, -0.001, 0.001, 0.001],
        [-0.001, -0.001, 0.001, 0.001],
        [0.0, 0.0, 0.0, 0.0],
        [-0.001, -0.001, 0.001, 0.001],
        [0.0, -0.002, 0.002, 0.002],
    ]
    bias = jnp.zeros(E)
    slow = np.zeros(E)
    for load, want in zip(loads, expected, strict=True):
        bias = update_bias(bias, jnp.array(load), 0.001)
        slow = ref.update_bias(slow, load, 0.001)
        np.testing.assert_allclose(bias, want, atol=1e-9)
        np.testing.assert_allclose(slow, want, atol=1e-12)
    # per layer: each row against its own mean
    two = update_bias(jnp.zeros((2, E)), jnp.array([loads[0], loads[4]]), 0.001)
    np.testing.assert_allclose(two, [expected[0], [0.001, -0.001, 0.001, 0.001]], atol=1e-9)


def _ec_inputs(seed):
    ks = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(ks[0], (N, D))
    w = jax.random.normal(ks[1], (D, E))
    wg = jax.random.normal(ks[2], (E, D, F)) / D**0.5
    wu = jax.random.normal(ks[3], (E, D, F)) / D**0.5
    wd = jax.random.normal(ks[4], (E, F, D)) / F**0.5
    proj = jax.random.normal(ks[5], (N, D))
    return x, w, wg, wu, wd, proj


@pytest.mark.parametrize("k, cf, score", [(2, 1.25, "softmax"), (1, 0.5, "sigmoid")])
def test_expert_choice_matches_the_reference(k, cf, score):
    x, w, wg, wu, wd, proj = _ec_inputs(k)
    act = jax.nn.softmax if score == "softmax" else jax.nn.sigmoid
    chosen = ref.choose_tokens(act(x @ w), B, k, cf)

    def fast(x, w, wg, wu, wd):
        y, dropped, load = expert_choice.dispatch(x, act(x @ w), wg, wu, wd, n_seqs=B, top_k=k,
                                                  capacity_factor=cf)  # fmt: skip
        return jnp.sum(y * proj), (y, dropped, load)

    def slow(x, w, wg, wu, wd):
        y, dropped = ref.expert_choice(x, act(x @ w), wg, wu, wd, chosen)
        return jnp.sum(y * proj), (y, dropped)

    (_, (y, dropped, load)), g = jax.value_and_grad(fast, argnums=range(5), has_aux=True)(x, w, wg, wu, wd)
    slow_vg = jax.value_and_grad(slow, argnums=range(5), has_aux=True)
    (_, (y_ref, dropped_ref)), g_ref = slow_vg(x, w, wg, wu, wd)
    np.testing.assert_allclose(y, y_ref, atol=TOL)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=TOL)
    assert float(dropped) == pytest.approx(dropped_ref)
    np.testing.assert_allclose(load, 1.0 / E)
    idx, _ = expert_choice.choose(act(x @ w), B, k, cf)
    assert idx.shape[-1] == len(chosen[0][0])  # the same capacity
    if cf < 1:
        assert dropped_ref > 0  # the case leaves tokens unserved


def test_expert_choice_never_looks_at_later_positions():
    x, w, wg, wu, wd, _ = _ec_inputs(3)
    s = jax.nn.softmax(x @ w)
    y, *_ = expert_choice.dispatch(x, s, wg, wu, wd, n_seqs=B, top_k=1, capacity_factor=1.0)
    later = jnp.arange(N) >= 3 * B  # positions 3.. (position-major)
    x2 = jnp.where(later[:, None], jax.random.normal(jax.random.key(9), x.shape), x)
    y2, *_ = expert_choice.dispatch(x2, jax.nn.softmax(x2 @ w), wg, wu, wd, n_seqs=B, top_k=1,
                                    capacity_factor=1.0)  # fmt: skip
    np.testing.assert_array_equal(y[: 3 * B], y2[: 3 * B])


# ------------------------------------------------------------------------------------------- the MoE layer
RECIPES = {  # name: ModelConfig fields (the router axis values of sweeps/routers.yaml)
    "softmax-drop": dict(dispatch="capacity", overflow="drop", capacity_factor=1.0),
    "softmax-recycle": dict(dispatch="capacity", overflow="recycle", capacity_factor=1.0),
    "softmax-renorm-dropless": dict(dispatch="dropless", renormalize=True),
    "sigmoid-bias-seq": dict(router_score="sigmoid", router_bias_rate=1e-3, seq_aux_loss_coef=1e-4,
                             aux_loss_coef=0.0, capacity_factor=1.0),  # fmt: skip
    "expert-choice": dict(dispatch="expert_choice", aux_loss_coef=0.0, capacity_factor=1.0),
    "softmax-scaled-dropless": dict(dispatch="dropless", routed_scale=4.0),  # DeepSeek's routed scaling
    "expert-choice-scaled": dict(dispatch="expert_choice", aux_loss_coef=0.0, capacity_factor=1.0,
                                 routed_scale=2.5),  # fmt: skip
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_moe_layer_matches_reference_routing_and_dispatch(name):
    """The whole MoE layer (router + dispatch) of every recipe against the per-token references: output,
    router losses and gradients of every parameter and of the input."""
    from flax import nnx

    from moelab.config import ModelConfig
    from moelab.model.dispatch import reference as dref
    from moelab.model.moe import MoE

    cfg = ModelConfig(d_model=D, n_experts=E, top_k=2, d_expert=F, n_layers=2, **RECIPES[name])
    moe = MoE(cfg, jnp.float32, nnx.Rngs(0))
    if cfg.router_bias_rate:
        moe.router_bias.value = jnp.array([0.3, -0.2, 0.0, 0.1])
    graphdef, params, rest = nnx.split(moe, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    proj = jax.random.normal(jax.random.key(2), (B, T, D))
    key = jax.random.key(3)
    coef = jnp.array([0.3, 0.2, 0.7])

    def fast(params, x):
        y, st = nnx.merge(graphdef, params, rest)(x, key)
        return jnp.sum(y * proj) + coef @ jnp.stack([st.aux_loss, st.z_loss, st.seq_aux_loss]), (y, st)

    p = {k: v[...] for k, v in nnx.to_flat_state(params)}
    flat_x = x.transpose(1, 0, 2).reshape(N, D)
    bias = rest["router_bias"][...] if cfg.router_bias_rate else None

    def slow(p, x):
        w, wg, wu, wd = p[("router",)], p[("w_gate",)], p[("w_up",)], p[("w_down",)]
        flat = x.transpose(1, 0, 2).reshape(N, D)
        if cfg.dispatch == "expert_choice":
            s = jax.nn.softmax(flat @ w)
            y, _ = ref.expert_choice(flat, s, wg, wu, wd, chosen)
            logits = flat @ w
            aux, z, seq = 0.0, jnp.mean(jax.nn.logsumexp(logits, -1) ** 2), 0.0
        else:
            top_w, aux, z, _, seq = ref.route(flat, w, choice, cfg.renormalize, cfg.router_score, n_seqs=B)
            probs = jax.nn.softmax(flat @ w) if cfg.overflow == "recycle" else None
            y, _, _ = dref.dispatch(flat, choice, top_w, wg, wu, wd, capacity_factor=cfg.capacity_factor,
                                    overflow=cfg.overflow, key=key, dropless=cfg.dispatch == "dropless",
                                    probs=probs)  # fmt: skip
            if not cfg.seq_aux_loss_coef:
                seq = 0.0
        y = cfg.routed_scale * y.reshape(T, B, D).transpose(1, 0, 2)
        return jnp.sum(y * proj) + coef @ jnp.stack([jnp.asarray(aux), z, jnp.asarray(seq)]), y

    if cfg.dispatch == "expert_choice":
        chosen = ref.choose_tokens(jax.nn.softmax(flat_x @ p[("router",)]), B, cfg.top_k, cfg.capacity_factor)
    else:
        choice = ref.choose_experts(flat_x, p[("router",)], cfg.top_k, cfg.router_score, bias)
    (_, (y, st)), (g_p, g_x) = jax.value_and_grad(fast, argnums=(0, 1), has_aux=True)(params, x)
    (_, y_ref), (gr_p, gr_x) = jax.value_and_grad(slow, argnums=(0, 1), has_aux=True)(p, x)
    np.testing.assert_allclose(y, y_ref, atol=TOL)
    np.testing.assert_allclose(g_x, gr_x, atol=TOL)
    for path, g in nnx.to_flat_state(g_p):
        np.testing.assert_allclose(g[...], gr_p[path], atol=TOL, err_msg=str(path))
    assert ("router_bias",) not in dict(nnx.to_flat_state(params))  # state, not a parameter
    if cfg.dispatch != "expert_choice" and cfg.capacity_factor == 1.0:
        assert float(st.dropped_frac) + float(st.recycled_frac) > 0  # the case overflows
    np.testing.assert_allclose(st.bias, np.zeros(E) if bias is None else bias)


def test_train_step_moves_the_bias_outside_the_gradient():
    """Five production train steps with aux-loss-free balancing: each step's bias equals the previous one
    moved by +-gamma against the previous step's logged load (hand rule in the reference), per layer, across
    cla_share sublayers; the bias is neither a parameter nor in the optimiser state."""
    from flax import nnx

    from moelab.config import ModelConfig
    from moelab.model import Transformer
    from moelab.train.config import TrainConfig
    from moelab.train.optim import make_optimizer
    from moelab.train.step import make_train_step, param_labels

    cfg = ModelConfig(d_model=16, n_layers=4, cla_share=2, n_heads=1, n_kv_heads=1, head_dim=16, n_experts=E,
                      top_k=2, d_expert=16, router_score="sigmoid", router_bias_rate=1e-3,
                      seq_aux_loss_coef=1e-4, aux_loss_coef=0.0, max_seq_len=16)  # fmt: skip
    graphdef, params, rest = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    assert [p[-1] for p, _ in nnx.to_flat_state(rest)] == ["router_bias", "router_bias"]
    tx = make_optimizer(TrainConfig(lr=1e-2), param_labels(params))
    opt_state = tx.init(params)
    assert not any("router_bias" in jax.tree_util.keystr(p) for p, _ in
                   jax.tree_util.tree_flatten_with_path(opt_state)[0])  # fmt: skip
    step_fn = make_train_step(graphdef, tx, cfg)
    state = (params, opt_state, jnp.asarray(-1, jnp.int32), rest)
    expect = np.zeros((cfg.n_layers, E))
    for i in range(5):
        batch = jax.random.randint(jax.random.key(i), (4, 17), 0, cfg.vocab_size, jnp.int32)
        *state, metrics = step_fn(*state, batch, np.int32(i), np.float32(1e-2), np.int32(0))
        np.testing.assert_allclose(metrics["router"].bias, expect, atol=1e-7)  # the bias this step used
        expect = ref.update_bias(expect, np.asarray(metrics["load"]), 1e-3)
    stacked = {p[1]: np.asarray(v[...]) for p, v in nnx.to_flat_state(state[3])}  # [n_blocks, E] each
    np.testing.assert_allclose(stacked["layer_0"], expect[0::2], atol=1e-7)
    np.testing.assert_allclose(stacked["layer_1"], expect[1::2], atol=1e-7)
    assert np.abs(expect).max() > 0 and np.allclose(np.round(expect / 1e-3), expect / 1e-3, atol=1e-4)
