"""Every dispatch strategy against the slow per-token reference: outputs and gradients, float32, <= 1e-5."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moelab.model.dispatch import (
    DROPLESS,
    blocksparse,
    capacity,
    dropless,
    ragged_dot_is_grouped,
    reference,
    resolve,
)
from moelab.model.router import route

N, D, F, E = 24, 8, 12, 4
TOL = 1e-5


def _inputs(seed, k, skew=True):
    ks = jax.random.split(jax.random.key(seed), 7)
    x = jax.random.normal(ks[0], (N, D))
    # skewed choices so that expert 0 overflows
    logits = jax.random.normal(ks[1], (N, E)) + (jnp.array([2.0, 0, 0, 0]) if skew else 0)
    top_idx = jax.lax.top_k(logits, k)[1].astype(jnp.int32)
    top_w = jax.random.uniform(ks[2], (N, k))
    wg = jax.random.normal(ks[3], (E, D, F)) / D**0.5
    wu = jax.random.normal(ks[4], (E, D, F)) / D**0.5
    wd = jax.random.normal(ks[5], (E, F, D)) / F**0.5
    proj = jax.random.normal(ks[6], (N, D))
    return x, top_idx, top_w, wg, wu, wd, proj


def _value_and_grads(fn, x, top_idx, top_w, wg, wu, wd, proj, **kw):
    def loss(x, top_w, wg, wu, wd):
        y, _, _ = fn(x, top_idx, top_w, wg, wu, wd, **kw)
        return jnp.sum(y * proj), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True)(x, top_w, wg, wu, wd)
    return y, grads


CASES = [
    # (strategy, k, capacity_factor, overflow)
    ("capacity", 1, 1.0, "drop"),
    ("capacity", 2, 0.75, "drop"),
    ("capacity", 2, 0.75, "recycle"),
    ("capacity", 1, 0.5, "recycle"),
    ("capacity", 2, 4.0, "drop"),  # nothing dropped
    ("dropless", 1, None, None),
    ("dropless", 2, None, None),
]


@pytest.mark.parametrize("strategy, k, cf, overflow", CASES)
def test_matches_reference(strategy, k, cf, overflow):
    x, top_idx, top_w, wg, wu, wd, proj = _inputs(k, k)
    key = jax.random.key(7)
    fast = {"capacity": capacity.dispatch, "dropless": dropless.dispatch}[strategy]
    kw = dict(capacity_factor=cf, overflow=overflow, key=key)
    y, grads = _value_and_grads(jax.jit(fast, static_argnames=("capacity_factor", "overflow")),
                                x, top_idx, top_w, wg, wu, wd, proj, **kw)  # fmt: skip
    ref_kw = dict(kw, dropless=strategy == "dropless")
    y_ref, grads_ref = _value_and_grads(reference.dispatch, x, top_idx, top_w, wg, wu, wd, proj, **ref_kw)
    assert float(jnp.max(jnp.abs(y - y_ref))) <= TOL
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert float(jnp.max(jnp.abs(g - g_ref))) <= TOL
    _, dropped, recycled = fast(x, top_idx, top_w, wg, wu, wd, **kw)
    _, dropped_ref, recycled_ref = reference.dispatch(x, top_idx, top_w, wg, wu, wd, **ref_kw)
    assert float(dropped) == pytest.approx(dropped_ref) and float(recycled) == pytest.approx(recycled_ref)
    if strategy == "capacity" and cf < 1:
        assert dropped_ref + recycled_ref > 0  # the case really overflows


@pytest.mark.parametrize("k, cf", [(1, 0.5), (2, 0.75)])
def test_recycled_gate_is_the_router_probability_where_it_lands(k, cf):
    """Tencent's top1gating: softmax x final dispatch mask. Outputs and gradients (probs included) against
    the reference, and the gates really differ from keeping the overflowed expert's weight."""
    x, top_idx, top_w, wg, wu, wd, proj = _inputs(10 + k, k)
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(3), (N, E)), axis=-1)
    kw = dict(capacity_factor=cf, overflow="recycle", key=jax.random.key(7))

    def run(fn):
        def loss(x, top_w, probs, wg):
            y, _, _ = fn(x, top_idx, top_w, wg, wu, wd, probs=probs, **kw)
            return jnp.sum(y * proj), y

        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(x, top_w, probs, wg)

    (_, y), grads = run(jax.jit(capacity.dispatch, static_argnames=("capacity_factor", "overflow")))
    (_, y_ref), grads_ref = run(reference.dispatch)
    assert float(jnp.max(jnp.abs(y - y_ref))) <= TOL
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert float(jnp.max(jnp.abs(g - g_ref))) <= TOL
    assert float(jnp.max(jnp.abs(grads[2]))) > 0  # the router probabilities of landing experts get gradient
    y_kept, _, recycled = capacity.dispatch(x, top_idx, top_w, wg, wu, wd, **kw)
    assert float(recycled) > 0 and float(jnp.max(jnp.abs(y - y_kept))) > 1e-3


def _top_idx(kind, k):
    """Degenerate routings: every token to expert 0 (experts 1.. empty), or expert 1 never chosen."""
    if kind == "one_expert":
        return jnp.tile(jnp.arange(k, dtype=jnp.int32), (N, 1))  # choice j -> expert j; k = 1: all to 0
    rows = jax.random.randint(jax.random.key(5), (N, E - 1), 0, 100).argsort(axis=1)[:, :k]
    return jnp.array([0, 2, 3], jnp.int32)[rows]  # expert 1 empty


@pytest.mark.parametrize(
    "k, block, routing",
    [
        (1, 5, "random"),  # N·k = 24 not a multiple of 5: every expert ends in a partial block
        (2, (8, 4, 2), "random"),  # full blocks, the binary digits of the rest, a last partial block
        (2, (16, 8, 4), "empty_expert"),
        (1, (8, 4), "one_expert"),  # all N tokens to expert 0 (24 = 3 x 8), the others empty
        (2, 64, "random"),  # one block larger than all rows
    ],
)
@pytest.mark.parametrize("unrolled", [True, False], ids=["unrolled", "expert-loop"])
def test_blocksparse_matches_reference(k, block, routing, unrolled, monkeypatch):
    # the experts unrolled at trace time (E <= UNROLL_MAX_EXPERTS) or a loop over them (larger E)
    monkeypatch.setattr(blocksparse, "UNROLL_MAX_EXPERTS", E if unrolled else E - 1)
    x, top_idx, top_w, wg, wu, wd, proj = _inputs(10 + k, k)
    if routing != "random":
        top_idx = _top_idx(routing, k)
    fast = jax.jit(
        functools.partial(blocksparse.dispatch, block=block), static_argnames=("capacity_factor", "overflow")
    )
    kw = dict(capacity_factor=None, overflow=None)
    y, grads = _value_and_grads(fast, x, top_idx, top_w, wg, wu, wd, proj, **kw)
    y_ref, grads_ref = _value_and_grads(
        reference.dispatch, x, top_idx, top_w, wg, wu, wd, proj, **kw, dropless=True
    )
    assert float(jnp.max(jnp.abs(y - y_ref))) <= TOL
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert float(jnp.max(jnp.abs(g - g_ref))) <= TOL
    if routing == "one_expert":  # the empty experts get exactly zero gradient
        assert all(float(jnp.max(jnp.abs(g[1:]))) == 0.0 for g in grads[2:])


def test_blocksparse_block_sizes_rule_and_bfloat16():
    # CPU rule: halving sizes from the largest power of two <= N·k / E (within [32, 128]) down to 32
    assert blocksparse.block_sizes(4096, 8, "cpu") == (128, 64, 32)
    assert blocksparse.block_sizes(4096 * 8, 64, "cpu") == (128, 64, 32)
    assert blocksparse.block_sizes(1000, 16, "cpu") == (32,)
    assert blocksparse.block_sizes(48, 4, "cpu") == (32,)
    assert blocksparse.block_sizes(4096, 8, "gpu") == (128,)
    x, top_idx, top_w, wg, wu, wd, proj = _inputs(3, 2)
    bf = [a.astype(jnp.bfloat16) for a in (x, wg, wu, wd)]
    y16, _, _ = blocksparse.dispatch(bf[0], top_idx, top_w, *bf[1:], block=5)
    y32, _, _ = blocksparse.dispatch(x, top_idx, top_w, wg, wu, wd, block=5)
    assert y16.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(y16.astype(jnp.float32) - y32))) <= 0.05 * float(jnp.max(jnp.abs(y32)))


def test_auto_resolves_to_a_dropless_strategy():
    assert resolve("auto") in DROPLESS and resolve("capacity") == "capacity"
    # CPU XLA lowers ragged_dot to a dense masked product (E times the FLOPs): auto must not pick it there
    assert not ragged_dot_is_grouped("cpu") and resolve("auto", "cpu") == "blocksparse"


def test_recycle_fills_free_room_within_capacity_and_is_reproducible():
    _, top_idx, *_ = _inputs(3, 2)
    cap = capacity.capacity_of(N, 2, E, 1.0)
    e1, p1, kept1, rec1 = capacity.plan(top_idx, E, cap, "recycle", jax.random.key(1))
    e2, p2, kept2, rec2 = capacity.plan(top_idx, E, cap, "recycle", jax.random.key(1))
    e3, *_ = capacity.plan(top_idx, E, cap, "recycle", jax.random.key(2))
    assert np.array_equal(e1, e2) and np.array_equal(p1, p2)
    assert not np.array_equal(e1, e3)
    slots = np.asarray(e1 * cap + p1)[np.asarray(kept1)]
    assert len(set(slots.tolist())) == len(slots)  # no slot used twice
    assert np.all(np.asarray(p1)[np.asarray(kept1)] < cap)
    assert int(np.sum(rec1)) > 0
    # total room is E * cap >= N * k here, so recycling serves every assignment
    assert E * cap >= N * 2 and bool(np.all(kept1))
    # drop keeps the same first-pass assignments
    e_d, p_d, kept_d, _ = capacity.plan(top_idx, E, cap, "drop", None)
    assert np.array_equal(np.asarray(e_d)[np.asarray(kept_d)], np.asarray(e1)[np.asarray(kept_d)])


def test_router_losses():
    x = jax.random.normal(jax.random.key(0), (64, D))
    w = jax.random.normal(jax.random.key(1), (D, E))
    r = route(x, w, 2, renormalize=True)
    np.testing.assert_allclose(np.sum(r.top_w, -1), 1.0, rtol=1e-6)
    assert float(jnp.sum(r.load)) == pytest.approx(1.0)
    logits = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    lse = np.log(np.exp(logits).sum(-1))
    assert float(r.z_loss) == pytest.approx(np.mean(lse**2), rel=1e-5)
    probs = np.exp(logits - lse[:, None])
    f = np.zeros(E)
    for row in np.asarray(r.top_idx):
        f[row] += 1
    f /= f.sum()
    assert float(r.aux_loss) == pytest.approx(E * np.sum(f * probs.mean(0)), rel=1e-5)
    # uniform router: aux loss is exactly 1 (its minimum under balanced load)
    r0 = route(x, jnp.zeros((D, E)), 1, renormalize=False)
    assert float(r0.aux_loss) == pytest.approx(1.0)
    assert r0.top_idx.dtype == jnp.int32 and r.top_w.dtype == jnp.float32
