"""moelab.train.noise: the gradient noise scale estimator against a toy whose noise scale is known exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moelab.train.noise import (
    GROUPS,
    NoiseEMA,
    auto_expert_lr_scale,
    group_masks,
    group_sq_norms,
    probe_sq_norms,
    unbiased_components,
)
from moelab.train.optim import ParamKind, expert_lr_ratio

# Linear regression y = x.w* + sigma*eps with x ~ N(0, I), loss 0.5 (x.w - y)^2 at w = w* + v. The per-example
# gradient is g = x (x.v - sigma*eps): G = E g = v and Sigma = v v^T + (|v|^2 + sigma^2) I (Gaussian fourth
# moments), so on a block of d_g coordinates B_simple = (|v_g|^2 + d_g (|v|^2 + sigma^2)) / |v_g|^2.
D_EXPERT, D_SHARED, SIGMA = 8, 24, 0.5


def _toy():
    rng = np.random.default_rng(0)
    w_star = {"e": jnp.asarray(rng.normal(size=D_EXPERT)), "s": jnp.asarray(rng.normal(size=D_SHARED))}
    v = {"e": jnp.full(D_EXPERT, 0.3), "s": jnp.full(D_SHARED, 0.2)}
    labels = {"e": ParamKind.EXPERT, "s": ParamKind.DECAY}
    ve, vs = float(jnp.sum(v["e"] ** 2)), float(jnp.sum(v["s"] ** 2))
    noise = ve + vs + SIGMA**2
    true = {
        "all": (ve + vs + (D_EXPERT + D_SHARED) * noise) / (ve + vs),
        "expert": (ve + D_EXPERT * noise) / ve,
        "shared": (vs + D_SHARED * noise) / vs,
    }
    return w_star, jax.tree.map(jnp.add, w_star, v), labels, true


def _loss(p, batch):
    x, y = batch[:, :-1], batch[:, -1]
    return 0.5 * jnp.mean((x[:, :D_EXPERT] @ p["e"] + x[:, D_EXPERT:] @ p["s"] - y) ** 2)


def test_recovers_known_noise_scale_within_10_percent():
    w_star, w, labels, true = _toy()
    masks = group_masks(labels)
    batch, probes = 64, 1000

    def one(key):
        kx, ke = jax.random.split(key)
        x = jax.random.normal(kx, (batch, D_EXPERT + D_SHARED))
        y = (
            x[:, :D_EXPERT] @ w_star["e"]
            + x[:, D_EXPERT:] @ w_star["s"]
            + SIGMA * jax.random.normal(ke, (batch,))
        )
        return probe_sq_norms(jax.grad(_loss), masks, w, jnp.concatenate([x, y[:, None]], 1))

    out = jax.device_get(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), probes)))
    ema = NoiseEMA(beta=0.995)
    for i in range(probes):
        ema.update({g: (out[g][0][i], out[g][1][i]) for g in out}, batch / 2, batch)
    for group in GROUPS:
        assert ema.b_simple(group) == pytest.approx(true[group], rel=0.10), group
    # the naive ratio (squared norm of one batch, no correction) is far off: the test can tell them apart
    naive = np.mean(out["all"][1]) / np.mean(out["all"][0])
    assert abs(naive - true["all"]) / true["all"] > 0.5


def test_unbiased_components_invert_the_expectation_exactly():
    rng = np.random.default_rng(1)
    for _ in range(20):
        g2, tr = rng.uniform(0.01, 10), rng.uniform(0.01, 1e4)
        bs, bb = sorted(rng.choice(np.arange(1, 5000), 2, replace=False).astype(float))
        got = unbiased_components(g2 + tr / bs, g2 + tr / bb, bs, bb)
        np.testing.assert_allclose(got, (g2, tr), rtol=1e-9)
    with pytest.raises(ValueError, match="b_small must be < b_big"):
        unbiased_components(1.0, 1.0, 8, 8)


def test_group_norms_match_a_plain_loop():
    rng = np.random.default_rng(2)
    kinds = [ParamKind.EXPERT, ParamKind.DECAY, ParamKind.NO_DECAY, ParamKind.EXPERT]
    grads = {f"p{i}": jnp.asarray(rng.normal(size=(i + 2, 3)), jnp.float32) for i in range(4)}
    labels = {f"p{i}": k for i, k in enumerate(kinds)}
    got = group_sq_norms(grads, group_masks(labels))
    ref = {"all": 0.0, "expert": 0.0, "shared": 0.0}
    for name, g in grads.items():
        s = float(np.sum(np.asarray(g, np.float64) ** 2))
        ref["all"] += s
        ref["expert" if labels[name] == ParamKind.EXPERT else "shared"] += s
    for group in ref:
        assert float(got[group]) == pytest.approx(ref[group], rel=1e-5)
    assert set(group_masks({"a": ParamKind.DECAY})) == {"all", "shared"}  # a dense model has no expert group


def test_probe_halves_against_separate_gradients():
    _, w, labels, _ = _toy()
    masks = group_masks(labels)
    batch = jnp.asarray(np.random.default_rng(3).normal(size=(10, D_EXPERT + D_SHARED + 1)), jnp.float32)
    got = probe_sq_norms(jax.grad(_loss), masks, w, batch)
    ga, gb, gfull = (jax.grad(_loss)(w, b) for b in (batch[:5], batch[5:], batch))
    sq = lambda t: sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(t))  # noqa: E731
    assert float(got["all"][0]) == pytest.approx((sq(ga) + sq(gb)) / 2, rel=1e-5)
    assert float(got["all"][1]) == pytest.approx(sq(gfull), rel=1e-5)
    assert float(got["expert"][1]) == pytest.approx(sq(gfull["e"]), rel=1e-5)
    with pytest.raises(ValueError, match="batch size must be even"):
        probe_sq_norms(jax.grad(_loss), masks, w, batch[:5])


def test_ema_bias_correction_state_and_unmeasurable_signal():
    ema = NoiseEMA(beta=0.9)
    assert ema.b_simple() is None and ema.metrics() == dict.fromkeys(
        ("b_simple", "b_simple_expert", "b_simple_shared")
    )
    # constant probes: the bias-corrected average equals them from the first update on
    g2, tr = 2.0, 300.0
    for _ in range(3):
        ema.update({"all": (g2 + tr / 8, g2 + tr / 16)}, 8, 16)
        assert ema.b_simple() == pytest.approx(tr / g2)
    again = NoiseEMA.from_dict(ema.to_dict())
    assert again == ema and again.b_simple() == ema.b_simple()
    for sq in ((4.0, 1.0), (1.0, 2.0)):  # |G|^2 estimate < 0; tr(Sigma) estimate < 0
        noisy = NoiseEMA()
        noisy.update({"all": sq}, 8, 16)
        assert noisy.b_simple() is None  # not measurable, rather than a negative number
    with pytest.raises(ValueError, match="beta"):
        NoiseEMA(beta=1.0)


def test_auto_expert_scale_is_the_papers_rule_when_expert_noise_is_e_over_k_times_shared():
    for batch, b_noise, e, k in ((1000, 1000, 16, 1), (4096, 300, 8, 2), (64, 1e5, 16, 1)):
        got = auto_expert_lr_scale(batch, b_noise, b_noise * e / k)
        assert got == pytest.approx(expert_lr_ratio(batch, b_noise, e, k))
    assert auto_expert_lr_scale(512, 700, 700) == pytest.approx(1.0)  # same noise scale: same rate


def test_auto_expert_scale_lives_in_the_optimiser_state_and_matches_a_fixed_scale():
    from moelab.train import optim
    from moelab.train.config import TrainConfig

    rng = np.random.default_rng(4)
    params = {k: jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) for k in ("e", "d", "n")}
    labels = {"e": ParamKind.EXPERT, "d": ParamKind.DECAY, "n": ParamKind.NO_DECAY}
    grads = jax.tree.map(lambda p: p * 0.1 + 0.05, params)
    base = dict(lr=1e-2, warmup_frac=0.0, schedule="constant")
    fixed = optim.make_optimizer(TrainConfig(**base, expert_lr_scale=0.25), labels)
    auto = optim.make_optimizer(TrainConfig(**base, expert_lr_scale="auto"), labels)
    state = auto.init(params)
    assert optim.get_expert_scale(state) == 1.0
    state = optim.set_expert_scale(state, 0.25)
    assert optim.get_expert_scale(state) == pytest.approx(0.25)
    want, _ = fixed.update(grads, fixed.init(params), params)
    got, state = jax.jit(auto.update)(grads, state, params)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    assert optim.get_expert_scale(state) == pytest.approx(0.25)  # the update keeps it
    assert optim.get_expert_scale(fixed.init(params)) is None
    # the new scalar keeps the old one's placement (a newly committed argument recompiles the step)
    scale_of = lambda st: [x for x in jax.tree.leaves(st) if x.shape == ()][-1]  # noqa: E731
    assert not scale_of(optim.set_expert_scale(auto.init(params), 0.5)).committed
    committed = jax.device_put(auto.init(params), jax.devices()[0])
    assert scale_of(optim.set_expert_scale(committed, 0.5)).committed


@pytest.mark.parametrize(
    "train,model,match",
    [
        ({"expert_lr_scale": "auto"}, {"n_experts": 1}, "needs routed experts"),
        ({"expert_lr_scale": "fast"}, {}, "number > 0 or auto"),
        ({"expert_lr_scale": "auto", "noise_every": 0}, {}, "noise_every >= 1"),
        ({"expert_lr_scale": "auto", "batch_size": 5}, {}, "even train.batch_size"),
        ({"noise_every": -1}, {}, "train.noise_every must be an integer >= 0"),
    ],
)
def test_bad_noise_and_auto_settings_fail_naming_the_field(train, model, match):
    from moelab.errors import ConfigError
    from moelab.train.config import RunConfig

    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict({"model": {"n_experts": 4, **model}, "train": train})


# ---------------------------------------------------------------------------------------------- in a real run
def test_probe_never_changes_training_and_auto_resumes_exactly(tmp_path, monkeypatch):
    from moelab.train import run_training
    from moelab.train.metrics import read_metrics
    from tests._train_helpers import tiny_run, write_corpus

    monkeypatch.setenv("MOELAB_CACHE_DIR", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path)
    kw = dict(tokens=16 * 8 * 24, log_every=4, checkpoint_every=12, eval_every=24)
    off = run_training(tiny_run(corpus, noise_every=0, **kw), tmp_path / "off", progress=False)
    on = run_training(tiny_run(corpus, noise_every=2, **kw), tmp_path / "on", progress=False)
    assert on["eval_loss"] == off["eval_loss"]  # the probe reads, never writes
    assert off["noise_not_measured"] == "train.noise_every is 0" and off["b_simple"] is None
    assert on["noise_probes"] == 12 and on["noise_overhead"] > 0 and on["b_simple"] > 0
    rows = read_metrics(tmp_path / "on" / "metrics.jsonl")
    assert all(k in rows[-1] for k in ("b_simple", "b_simple_expert", "b_simple_shared"))

    auto = tiny_run(corpus, noise_every=2, expert_lr_scale="auto", **kw)
    full = run_training(auto, tmp_path / "full", progress=False)
    assert full["expert_lr_scale_final"] != 1.0 and full["eval_loss"] != on["eval_loss"]

    def stop(step, total, text):
        if step >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(auto, tmp_path / "cut", progress=stop)
    resumed = run_training(auto, tmp_path / "cut", progress=False)
    assert resumed["resumed_from"] == 12
    a, b = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("full", "cut"))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "b_simple", "expert_lr_scale"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9), (ra["step"], k)
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)
