"""The Transformer: parameter tree = accounting, axis names, causality, attention vs a naive loop, strategies
agree inside the model, gradients reach every parameter."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import moelab.model.transformer as transformer
from moelab.accounting import param_counts
from moelab.config import ModelConfig
from moelab.model import Transformer
from moelab.model.attention import Attention
from moelab.model.layers import rope
from moelab.model.stats import RouterStats
from moelab.parallel.remat import use_remat
from moelab.presets import get_preset

AXES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "experts", "layers", "norm"}
SMALL = dict(vocab_size=64, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_expert=24, max_seq_len=16)
MOE = ModelConfig(**SMALL, n_layers=4, cla_share=2, qk_norm=True, n_experts=4, top_k=2, n_shared_experts=1,
                  d_shared=16, tie_embeddings=False)  # fmt: skip


def _abstract(cfg):
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def _n_params(model):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(**SMALL, n_layers=2),
        ModelConfig(**SMALL, n_layers=3, qk_norm=True, tie_embeddings=False),
        MOE,
        ModelConfig(**SMALL, n_layers=6, cla_share=3, n_experts=8, top_k=1),
        ModelConfig.from_budget(2e5, n_experts=8, shared_ratio=0.5, granularity=2, top_k=2, cla_share=2),
    ],
)
def test_param_tree_equals_accounting(cfg):
    assert _n_params(_abstract(cfg)) == param_counts(cfg).total_with_embedding


def test_hunyuan_large_tree_without_materialising():
    cfg = get_preset("hunyuan-large")
    n = _n_params(_abstract(cfg))
    assert n == param_counts(cfg).total_with_embedding
    assert n == pytest.approx(389e9, rel=0.01)


def test_every_param_has_logical_axis_names():
    state = nnx.state(_abstract(MOE), nnx.Param)
    leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert leaves
    for p in leaves:
        names = p.get_metadata()["out_sharding"]
        assert len(names) == len(p.shape) and set(names) <= AXES, (names, p.shape)
    blocks = MOE.n_layers // MOE.cla_share
    assert _abstract(MOE).blocks.layer_0.attn.k.shape[0] == blocks
    assert not hasattr(_abstract(MOE).blocks.layer_1.attn, "k")  # cross-layer K/V sharing


def _naive_attention(x, wq, wk, wv, wo, theta):
    """Per-head loop: causal softmax(q k^T / sqrt(d)) v with query head h reading K/V head h // group."""
    t = x.shape[0]
    q = rope(jnp.einsum("td,dhk->thk", x, wq), jnp.arange(t), theta)
    k = rope(jnp.einsum("td,dgk->tgk", x, wk), jnp.arange(t), theta)
    v = jnp.einsum("td,dgk->tgk", x, wv)
    h, g, hd = wq.shape[1], wk.shape[1], wq.shape[2]
    heads = []
    for i in range(h):
        s = q[:, i] @ k[:, i // (h // g)].T / np.sqrt(hd)
        s = jnp.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        heads.append(jax.nn.softmax(s, -1) @ v[:, i // (h // g)])
    return jnp.einsum("thk,hkd->td", jnp.stack(heads, 1), wo)


def test_gqa_attention_and_cla_reuse_match_a_naive_loop():
    cfg = ModelConfig(**SMALL, n_layers=2, cla_share=2)
    first = Attention(cfg, True, jnp.float32, nnx.Rngs(1))
    second = Attention(cfg, False, jnp.float32, nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(0), (1, 10, cfg.d_model))
    out, kv = first(x, None)
    out2, _ = second(x * 2, kv)
    for b in range(1):
        ref = _naive_attention(x[b], first.q[...], first.k[...], first.v[...], first.o[...], cfg.rope_theta)
        np.testing.assert_allclose(out[b], ref, atol=1e-5)
        # the K/V-less layer attends with its own queries over the first layer's keys and values
        q2 = rope(jnp.einsum("td,dhk->thk", x[b] * 2, second.q[...]), jnp.arange(10), cfg.rope_theta)
        k, v = kv[0][b], kv[1][b]
        heads = []
        for i in range(cfg.n_heads):
            s = q2[:, i] @ k[:, i // 2].T / np.sqrt(cfg.head_dim)
            s = jnp.where(np.tril(np.ones((10, 10), bool)), s, -np.inf)
            heads.append(jax.nn.softmax(s, -1) @ v[:, i // 2])
        np.testing.assert_allclose(out2[b], jnp.einsum("thk,hkd->td", jnp.stack(heads, 1), second.o[...]),
                                   atol=1e-5)  # fmt: skip


def test_rope_scores_depend_only_on_relative_position():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 16))

    def score(m, n):
        return float(jnp.sum(rope(q, jnp.array([m]), 1e4) * rope(k, jnp.array([n]), 1e4)))

    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


@nnx.jit
def _forward(model, tokens, key):
    return model(tokens, router_key=key)


def test_forward_is_causal_reports_stats_and_recycle_is_keyed():
    cfg = MOE.replace(capacity_factor=1.0)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size, dtype=jnp.int32)
    logits, stats = _forward(model, tokens, jax.random.key(0))
    assert logits.shape == (2, 12, cfg.vocab_size) and logits.dtype == jnp.float32
    assert isinstance(stats, RouterStats) and stats.load.shape == (cfg.n_layers, cfg.n_experts)
    np.testing.assert_allclose(stats.load.sum(-1), 1.0, rtol=1e-6)
    for name in ("aux_loss", "z_loss", "dropped_frac", "recycled_frac"):  # one value per layer
        assert getattr(stats, name).shape == (cfg.n_layers,) and getattr(stats, name).dtype == jnp.float32
    assert float(stats.aux_loss.min()) >= 1.0 - 1e-6  # its minimum is 1 at perfect balance
    assert float(stats.dropped_frac.mean()) > 0  # capacity really binds, yet the model stays causal
    changed = tokens.at[:, 8:].set((tokens[:, 8:] + 1) % cfg.vocab_size)
    logits2, _ = _forward(model, changed, jax.random.key(0))
    np.testing.assert_allclose(logits[:, :8], logits2[:, :8], atol=1e-5)
    assert not np.allclose(logits[:, 8:], logits2[:, 8:], atol=1e-5)
    # recycle: same graph shape, different overflow policy; reproducible from the router key
    recycle = Transformer(cfg.replace(overflow="recycle"), rngs=nnx.Rngs(0))
    _, s1 = _forward(recycle, tokens, jax.random.key(0))
    _, s2 = _forward(recycle, tokens, jax.random.key(0))
    assert float(s1.recycled_frac.mean()) > 0
    np.testing.assert_array_equal(s1.recycled_frac, s2.recycled_frac)
    assert float(s1.dropped_frac.mean()) < float(stats.dropped_frac.mean())


def _loss(model, tokens, key):
    logits, stats = model(tokens, router_key=key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()
    return ce + model.cfg.aux_loss_coef * stats.aux_loss.mean() + model.cfg.z_loss_coef * stats.z_loss.mean()


_grad = nnx.jit(nnx.value_and_grad(_loss))


def test_capacity_without_overflow_equals_the_dropless_strategies_in_the_model_with_gradients():
    cfg = MOE.replace(capacity_factor=float(MOE.n_experts))  # room for every assignment
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, cfg.vocab_size, dtype=jnp.int32)
    results = []
    for dispatch in ("capacity", "dropless", "blocksparse", "auto"):
        model = Transformer(cfg.replace(dispatch=dispatch), rngs=nnx.Rngs(3))
        results.append(_grad(model, tokens, jax.random.key(0)))
    (l1, g1), *others = results
    for l2, g2 in others:
        assert float(abs(l1 - l2)) <= 1e-5
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-5
    for path, g in jax.tree_util.tree_leaves_with_path(g1):  # gradients reach every parameter
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0, path


def test_bfloat16_compute_runs_with_float32_logits():
    """dtype=bfloat16 computes the matrix products in bfloat16 on float32 parameters and returns float32
    logits and router statistics: the logits differ from the float32 model's by bfloat16 rounding (8-bit
    significand: 2**-8 = 0.4% per rounding; measured 0.29% of the largest logit), not more and not 0."""
    cfg32 = ModelConfig(**SMALL, n_layers=2, n_experts=4)
    m32, m16 = (Transformer(c, rngs=nnx.Rngs(0)) for c in (cfg32, cfg32.replace(dtype="bfloat16")))
    tokens = jax.random.randint(jax.random.key(4), (2, 16), 0, cfg32.vocab_size, dtype=jnp.int32)
    logits32, _ = _forward(m32, tokens, None)
    logits, stats = _forward(m16, tokens, None)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert stats.aux_loss.dtype == jnp.float32 and stats.load.dtype == jnp.float32
    p32, p16 = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (m32, m16))
    for a, b in zip(p32, p16, strict=True):
        assert a.dtype == b.dtype == jnp.float32 and bool(jnp.all(a == b))  # the same float32 parameters
    err = float(jnp.max(jnp.abs(logits - logits32)) / jnp.max(jnp.abs(logits32)))
    assert 1e-4 < err < 3e-2, err  # bfloat16 rounding really happened, and only rounding
    graphdef, state = nnx.split(m16)
    jaxpr = str(jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(t)[0])(state, tokens))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and sum("bf16" in line for line in dots) >= len(dots) // 2, dots[:3]


def test_dense_model_reports_a_single_expert_taking_every_token():
    cfg = ModelConfig(**SMALL, n_layers=4, cla_share=2)
    _, stats = _forward(Transformer(cfg, rngs=nnx.Rngs(0)), jnp.zeros((1, 8), jnp.int32), None)
    expected = jax.tree.map(lambda s: jnp.stack([s] * cfg.n_layers), RouterStats.dense())
    assert jax.tree.structure(stats) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got, want)


def test_remat_policy_changes_memory_not_gradients(monkeypatch):
    """moelab.parallel.remat.use_remat reaches the scanned layers: XLA's memory analysis of the compiled
    gradient step shows the temporary memory falling none > minimal > full (measured on this model, scanned:
    535, 265 and 234 kB), while the loss and gradients stay the same. A remat policy keeps the scan (unrolled,
    XLA merges the recomputation back into the forward pass); without one, the 4 blocks are unrolled
    (``UNROLL_MAX_BLOCKS``): the same gradients."""
    model = Transformer(MOE, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, MOE.vocab_size)

    def loss(p):
        logits, stats = nnx.merge(graphdef, p)(tokens)
        return jnp.mean(logits**2) + stats.aux_loss.mean()

    def compiled_step():
        return jax.jit(jax.value_and_grad(loss)).lower(params).compile()

    assert MOE.n_layers <= transformer.UNROLL_MAX_BLOCKS
    unrolled = compiled_step()  # no policy: the blocks unrolled
    assert "while" not in unrolled.as_text()
    monkeypatch.setattr(transformer, "UNROLL_MAX_BLOCKS", 0)  # the scan, as under a policy
    temp, grads = {}, {"unrolled": unrolled(params)}
    for policy in ("none", "minimal", "full"):
        with use_remat(policy):
            compiled = compiled_step()
        assert "while" in compiled.as_text()
        temp[policy] = compiled.memory_analysis().temp_size_in_bytes
        grads[policy] = compiled(params)
    assert temp["none"] > temp["minimal"] > temp["full"] > 0, temp
    assert temp["full"] < 0.5 * temp["none"], temp  # keeping only each layer's input: a large saving
    monkeypatch.setattr(transformer, "UNROLL_MAX_BLOCKS", 4)
    with use_remat("full"):
        assert "while" in compiled_step().as_text()  # a policy keeps the scan even where it could unroll
    for policy in ("minimal", "full", "unrolled"):
        for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[policy]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
