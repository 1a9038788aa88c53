"""moelab.train: configs, schedules, the optimiser, the jitted step against a plain reference, run folders."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import moelab.train.loop
from moelab.accounting import train_flops_per_token
from moelab.errors import ConfigError
from moelab.model import Transformer
from moelab.train import DataConfig, RunConfig, TrainConfig, optim, run_training
from moelab.train.metrics import METRIC_KEYS
from moelab.train.step import make_train_step, param_labels
from tests._train_helpers import METRIC_KEYS as CONTRACT_METRICS
from tests._train_helpers import SUMMARY_KEYS, TINY, tiny_run, write_corpus


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MOELAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "moelab-cache"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


# ---------------------------------------------------------------- configs
def test_run_config_round_trip_and_semantic_dict():
    run = RunConfig(model=TINY, data=DataConfig(corpus="x.txt"), train=TrainConfig(tokens=1000, lr=1e-3))
    again = RunConfig.from_dict(json.loads(json.dumps(run.to_dict())))
    assert again == run
    sem = run.semantic_dict()
    assert (
        "log_every" not in sem["train"]
        and "checkpoint_every" not in sem["train"]
        and sem["train"]["lr"] == 1e-3
    )
    other = run.replace(train=TrainConfig(tokens=1000, lr=1e-3, log_every=3, eval_every=7))
    assert other.semantic_dict() == sem and other.to_dict() != run.to_dict()
    assert run.replace(train=TrainConfig(tokens=1000, lr=2e-3)).semantic_dict() != sem
    assert RunConfig.from_dict({"model": "moe8-100k"}).model.n_experts == 8


@pytest.mark.parametrize(
    "bad,match",
    [
        (
            {"model": TINY.to_dict(), "train": {"seq_len": 129}},
            "train.seq_len=129 exceeds model.max_seq_len=128",
        ),
        ({"model": {**TINY.to_dict(), "vocab_size": 300}}, "does not match the byte tokenizer"),
        ({"model": TINY.to_dict(), "data": {"tokenizer": "bpe"}}, "too small for data.tokenizer=bpe"),
        ({"model": TINY.to_dict(), "train": {"tokens": 5, "flops": 1e9}}, "at most one budget"),
        ({"model": TINY.to_dict(), "train": {"schedule": "linear"}}, "train.schedule must be one of"),
        ({"model": TINY.to_dict(), "train": {"lrr": 1}}, "unknown train config field"),
        ({"model": TINY.to_dict(), "extra": {}}, "unknown run config section"),
    ],
)
def test_bad_run_configs(bad, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(bad)


def test_budget_in_tokens_or_flops():
    run = RunConfig(model=TINY, train=TrainConfig(flops=1e12, seq_len=32, batch_size=4))
    per_token = train_flops_per_token(TINY, 32)
    assert run.budget_tokens() == int(1e12 / per_token)
    assert run.total_steps() == int(1e12 / per_token) // 128
    assert RunConfig(model=TINY, train=TrainConfig(tokens=1000, seq_len=32, batch_size=4)).total_steps() == 7


# ---------------------------------------------------------------- schedules and eps_opt
def _ref_lr(train, total, step):
    peak, floor = train.lr, train.lr * train.min_lr_ratio
    w = round(train.warmup_frac * total)
    if step < w:
        return peak * (step + 1) / w
    if train.schedule == "cosine":
        frac = min(1.0, (step - w) / max(total - w - 1, 1))
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))
    a = round(train.anneal_frac * total)
    level = peak  # wsd plateau; hunyuan: cosine from the peak to the geometric middle of peak and floor
    middle = math.sqrt(peak * floor)
    if train.schedule == "hunyuan":
        frac = min(1.0, (step - w) / max(total - a - w - 1, 1))
        level = middle + 0.5 * (peak - middle) * (1 + math.cos(math.pi * frac))
    if step >= total - a:
        start = peak if train.schedule == "wsd" else middle
        return start + (floor - start) * (step - (total - a) + 1) / a
    return level


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "hunyuan"])
def test_schedules_match_reference(schedule):
    total = 400
    train = TrainConfig(lr=2e-3, schedule=schedule, warmup_frac=0.05, anneal_frac=0.05, min_lr_ratio=0.1)
    sched = optim.lr_schedule(train, total)
    got = np.asarray(jax.vmap(sched)(jnp.arange(total)))
    ref = np.array([_ref_lr(train, total, s) for s in range(total)])
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert got[-1] == pytest.approx(0.1 * 2e-3, rel=1e-5)
    if schedule == "wsd":  # Hunyuan-Large: the last 5% of the steps anneal from the peak to 1/10 of it
        assert got[379] == pytest.approx(2e-3) and got[380] < 2e-3 and np.all(np.diff(got[380:]) < 0)
    if schedule == "hunyuan":  # a long decay, continuous into the final 5% anneal, monotone after warmup
        assert np.all(np.diff(got[20:]) <= 1e-12) and got[379] == pytest.approx(2e-3 * 0.1**0.5, rel=1e-3)


def test_eps_opt_and_expert_ratio():
    assert optim.eps_opt(1000, 3e-4, 1000) == pytest.approx(3e-4)  # the maximum is at B = B_noise
    assert optim.eps_opt(500, 1.0, 1000) < 1.0 and optim.eps_opt(2000, 1.0, 1000) < 1.0
    assert optim.expert_lr_ratio(1000, 1000, 16) == pytest.approx(2 / 4.25)
    assert optim.expert_lr_ratio(1.0, 1e12, 16) == pytest.approx(0.25, rel=1e-3)  # B << B_noise
    assert optim.expert_lr_ratio(1e12, 1.0, 16) == pytest.approx(4.0, rel=1e-3)  # B >> B_noise
    assert optim.expert_lr_ratio(1000, 1000, 16, top_k=16) == pytest.approx(1.0)


# ---------------------------------------------------------------- optimiser
@pytest.fixture(scope="module")
def split_model():
    return nnx.split(Transformer(TINY, rngs=nnx.Rngs(1)), nnx.Param, ...)


def test_param_labels(split_model):
    labels = param_labels(split_model[1])
    flat = {jax.tree_util.keystr(p): int(v) for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]}
    kinds = {k.split("'")[-2] if "scale" not in k else "scale": v for k, v in flat.items()}
    assert kinds["w_gate"] == kinds["w_up"] == kinds["w_down"] == optim.ParamKind.EXPERT
    assert kinds["router"] == kinds["embed"] == kinds["q"] == optim.ParamKind.DECAY
    assert all(v == optim.ParamKind.DECAY for k, v in flat.items() if "shared" in k)
    assert all(v == optim.ParamKind.NO_DECAY for k, v in flat.items() if "norm" in k)


def test_weight_decay_mask_and_expert_lr_scale(split_model):
    params = split_model[1]
    labels = param_labels(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    ones = jax.tree.map(jnp.ones_like, params)
    t = TrainConfig(lr=1e-2, weight_decay=0.5, warmup_frac=0.0, schedule="constant", expert_lr_scale=0.25)
    tx = optim.make_optimizer(t, labels, optim.lr_schedule(t, 10))
    # zero gradients: only weight decay moves a parameter, by -lr * wd * p (x expert scale for experts)
    upd, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    for lab, u, p in zip(jax.tree.leaves(labels), jax.tree.leaves(upd), jax.tree.leaves(params), strict=True):
        scale = {0: 1.0, 1: 0.0, 2: 0.25}[int(lab)]
        np.testing.assert_allclose(u, -1e-2 * 0.5 * scale * p, rtol=1e-5, atol=1e-12)
    # unit gradients, no decay: Adam's first step is -lr * sign(g) (bias-corrected), x 0.25 for routed experts
    t2 = TrainConfig(
        lr=1e-2, weight_decay=0.0, warmup_frac=0.0, schedule="constant", expert_lr_scale=0.25, grad_clip=1e9
    )
    tx = optim.make_optimizer(t2, labels, optim.lr_schedule(t2, 10))
    upd, _ = jax.jit(tx.update)(ones, tx.init(params), params)
    for lab, u in zip(jax.tree.leaves(labels), jax.tree.leaves(upd), strict=True):
        expected = -1e-2 * (0.25 if int(lab) == optim.ParamKind.EXPERT else 1.0)
        np.testing.assert_allclose(u, expected, rtol=1e-4)


def test_train_step_matches_plain_reference(split_model):
    """The jitted, donated step against nnx.value_and_grad of the model + a separate optax update."""
    graphdef, params, rest = split_model
    t = TrainConfig(lr=1e-3, seq_len=16, batch_size=4, seed=5)
    labels = param_labels(params)
    tx = optim.make_optimizer(t, labels)  # the step multiplies by its lr argument
    opt_state = tx.init(params)
    lr = float(optim.lr_schedule(t, 50)(3))
    # the reference: optax's own clip + adamw with the decay mask, at the same learning rate
    ref_tx = optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.adamw(
            lr,
            b1=t.beta1,
            b2=t.beta2,
            eps=t.eps,
            weight_decay=t.weight_decay,
            mask=jax.tree.map(lambda k: k != optim.ParamKind.NO_DECAY, labels),
        ),
    )
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(4, 17)), jnp.int32)
    step = 3
    key = jax.random.fold_in(jax.random.key(t.seed + 1), step)

    def ref_loss(m):
        logits, stats = m(batch[:, :-1], router_key=key)
        logp = jax.nn.log_softmax(logits, axis=-1)
        ce = -jnp.mean(jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1))
        return ce + TINY.aux_loss_coef * stats.aux_loss.mean() + TINY.z_loss_coef * stats.z_loss.mean(), ce

    @jax.jit
    def ref_grad(p):
        return nnx.value_and_grad(ref_loss, has_aux=True)(nnx.merge(graphdef, p, rest))

    (ref_total, ref_ce), grads = ref_grad(params)
    updates, _ = jax.jit(ref_tx.update)(grads, ref_tx.init(params), params)
    ref_params = jax.jit(optax.apply_updates)(params, updates)

    train_step = make_train_step(graphdef, tx, TINY)
    new_params, _, first_bad, _, metrics = train_step(
        jax.tree.map(jnp.copy, params),
        jax.tree.map(jnp.copy, opt_state),
        jnp.asarray(-1, jnp.int32),
        rest,
        batch,
        jnp.asarray(step, jnp.int32),
        jnp.asarray(lr, jnp.float32),
        jnp.asarray(t.seed, jnp.int32),
    )
    assert int(first_bad) == -1
    assert float(metrics["loss"]) == pytest.approx(float(ref_ce), rel=1e-5)
    assert float(metrics["total_loss"]) == pytest.approx(float(ref_total), rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(float(optax.global_norm(grads)), rel=1e-4)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # 1e-3 of an Adam step


# ---------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("run") / "run"
    seen = []
    run = tiny_run(corpus)
    summary = run_training(run, out, progress=lambda *a: seen.append(a))
    return run, out, summary, seen


def test_run_folder_contract(finished):
    run, out, s, seen = finished
    files = sorted(p.name for p in out.iterdir())
    assert files == ["checkpoints", "config.json", "metrics.jsonl", "summary.json"]
    assert RunConfig.from_dict(json.loads((out / "config.json").read_text())) == run
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(s))
    for key in SUMMARY_KEYS:
        assert key in s
    assert s["status"] == "succeeded" and s["steps"] == 40 and s["tokens"] == 40 * 128
    assert s["flops"] == pytest.approx(40 * 128 * train_flops_per_token(TINY, 16))
    assert s["eval_bpb"] == pytest.approx(s["eval_loss"] / math.log(2))  # byte-level: one byte per token
    assert s["eval_loss"] < s["unigram_entropy"]  # it learned more than token frequencies
    assert np.asarray(s["expert_load"]).shape == (2, 4)
    assert s["dispatch"] == "capacity"  # the resolved strategy ("auto" is recorded as what it picked)
    assert s["eval_dispatch"]["dispatch"] == "capacity" and s["eval_dispatch"]["dropless"]  # capacity E/k
    assert s["versions"]["python"] and s["corpus_fingerprint"] and 0 < s["mfu"] < 1
    assert s["first_step_s"] > 0 and s["tokens_per_s"] > 0 and s["wall_time_s"] > s["first_step_s"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    assert set(METRIC_KEYS) >= CONTRACT_METRICS and all(set(METRIC_KEYS) <= set(r) for r in rows)
    assert [r["step"] for r in rows if "eval_loss" in r] == [20, 40]
    assert rows[-1]["eval_loss"] == s["eval_loss"] and rows[-1]["lr"] == pytest.approx(0.1 * run.train.lr)
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "40"]
    assert [a[0] for a in seen] == list(range(5, 41, 5)) and all(a[1] == 40 for a in seen)


def test_finished_run_is_not_trained_again(finished):
    run, out, s, _ = finished
    stamp = (out / "metrics.jsonl").stat().st_mtime_ns
    assert run_training(run, out, progress=False) == json.loads(json.dumps(s))
    assert (out / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_other_config_in_folder_is_refused(finished):
    run, out, _, _ = finished
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(
        ConfigError, match=r"holds a run with a different config \(train.lr: 0.003 there, 0.001 here"
    ):
        run_training(run.replace(train=dataclasses.replace(run.train, lr=1e-3)), out, progress=False)
    assert before == {p: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_divergence_is_a_status_not_a_crash(tmp_path, corpus):
    run = tiny_run(corpus, tokens=16 * 8 * 10, lr=1e30, warmup_frac=0.0, schedule="constant", grad_clip=1e30)
    s = run_training(run, tmp_path / "run", progress=False)
    assert s["status"] == "diverged" and s["eval_loss"] is None
    assert 1 <= s["diverged_step"] <= 5
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_failure_writes_failed_summary_and_reraises(tmp_path, corpus, monkeypatch):
    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(moelab.train.loop, "train_batch", broken)  # the loop's batch source fails
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_training(tiny_run(corpus), tmp_path / "run", progress=False)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and s["error"] == "RuntimeError: disk on fire"


def test_interruption_leaves_the_run_resumable(tmp_path, corpus, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(moelab.train.loop, "train_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_run(corpus), tmp_path / "run", progress=False)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "running" and s["error"] is None


def test_rich_progress_bar(capsys):
    """The bar draws on stderr (stdout carries `moelab train`'s summary line) with the step count and the
    text it was given; off, it draws nothing; a callable receives (step, total, text)."""
    from moelab.train.loop import _progress_bar

    update, close = _progress_bar(True, 10, 2)
    update(5, "loss 1.234")
    close()
    out, err = capsys.readouterr()
    assert out == "" and "train" in err and "5/10" in err and "loss 1.234" in err, (out, err)
    update, close = _progress_bar(False, 10, 0)
    update(1, "x")
    close()
    assert capsys.readouterr() == ("", "")
    seen = []
    update, close = _progress_bar(lambda *a: seen.append(a), 10, 0)
    update(3, "loss 2")
    close()
    assert seen == [(3, 10, "loss 2")]


def test_bpe_run_reports_bits_per_byte(tmp_path, corpus):
    run = tiny_run(corpus, tokens=16 * 8 * 10, eval_every=10)
    data = DataConfig(corpus=str(corpus), tokenizer="bpe", val_fraction=0.2)
    s = run_training(
        run.replace(model=TINY.replace(vocab_size=300), data=data), tmp_path / "run", progress=False
    )
    assert s["status"] == "succeeded" and s["tokenizer"].startswith("bpe")
    assert s["eval_bpb"] < s["eval_loss"] / math.log(2)  # a BPE token stands for more than one byte
