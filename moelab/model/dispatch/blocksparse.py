"""Block-sparse dispatch: dropless, static shapes, a grouped SwiGLU over expert-sorted rows in plain XLA.

MegaBlocks (Gale et al. 2022, arXiv 2211.15841) without a custom kernel. The N·k assignments are sorted by
expert (stable, so each expert's rows keep token order) into one [N·k, d] array; expert e owns the contiguous
rows ``[start_e, start_e + g_e)``. The experts' SwiGLU runs block by block: for each expert, ``ceil(g_e / b)``
blocks of ``b`` rows, each block one [b, d] x [d, f] product with that expert's weights, so the work is the
routed rows plus at most ``b - 1`` rows per expert (at most E·(b-1) in all, the bound of the issue; nothing is
dropped and no [E, capacity, d] buffer exists). The last block of an expert reads up to ``b - 1`` rows of the
next expert (or of the zero tail); its write is masked to the expert's own rows, and in the backward pass
those rows get a zero cotangent, so they add nothing to any gradient.

Why a loop over blocks rather than one batched einsum over blocks with gathered weights: on the 2-core CPU the
einsum copies one [d, f] weight per block (M·d·f floats, M = ceil(N·k/b) + E blocks) and runs every one of the
M static blocks, used or not; the loop reads each expert's weights once, runs only the blocks in use, and
keeps a block's activations in cache across the three products (docs/model.md has the measurements).
A ``jax.custom_vjp`` gives the backward pass the same structure (JAX's own transpose of a loop would carry a
zero [E, d, f] cotangent per step); the weight gradients accumulate per expert in float32.

Block size: ``block_size(...)`` (rule and measurements in its docstring and docs/model.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

#: Candidate block sizes (rows); ``block_size`` picks among them.
BLOCK_SIZES = (32, 64, 128, 256)


def block_size(n_rows: int, n_experts: int, backend: str | None = None) -> int:
    """Rows per block for ``n_rows = N·k`` assignments over ``n_experts`` experts on ``backend``.

    Larger blocks run closer to the matmul peak; smaller ones waste fewer rows (b/2 per expert on average,
    b - 1 at most). CPU: the largest candidate with E·b <= N·k / 4 (on average at most 1/8 of the rows
    wasted), at least 32. On the 2-core machine a loop of [b, 256] x [256, 1024] block products, one weight
    slice per expert, ran at about 65% of one large product's FLOP/s for b = 64, 78% for b = 128 and 76% for
    b = 256 (single thread, 2026-11-30), so blocks above 128 rows buy little and 32-64 only pay where the rows
    per expert are few.
    Other backends: 128 rows, a tile of the GPU/TPU matrix units (those backends are meant to use
    ``ragged_dot`` where it compiles to a grouped GEMM, ``moelab.model.dispatch.resolve``).
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return 128
    fits = [b for b in BLOCK_SIZES if n_experts * b * 4 <= n_rows]
    return max(fits) if fits else BLOCK_SIZES[0]


def dispatch(x, top_idx, top_w, w_gate, w_up, w_down, *, capacity_factor=None, overflow=None, key=None,
             block=None):  # fmt: skip
    """Dropless dispatch with the signature of ``reference.dispatch`` (``capacity_factor``, ``overflow`` and
    ``key`` unused). ``block`` overrides ``block_size``'s rule."""
    del capacity_factor, overflow, key  # dropless: no capacity, no overflow
    n, d = x.shape
    k = top_idx.shape[1]
    n_experts = w_gate.shape[0]
    b = block or block_size(n * k, n_experts)
    expert = top_idx.reshape(n * k)
    order = jnp.argsort(expert, stable=True)
    token = (order // k).astype(jnp.int32)
    group_sizes = jnp.bincount(expert, length=n_experts).astype(jnp.int32)
    out = grouped_swiglu(x[token], w_gate, w_up, w_down, group_sizes, b)
    weights = top_w.reshape(n * k)[order].astype(x.dtype)
    y = jnp.zeros((n, d), out.dtype).at[token].add(out * weights[:, None])
    zero = jnp.zeros((), jnp.float32)
    return y, zero, zero


def _blocks(group_sizes, b):
    """(start row, blocks) of each expert."""
    starts = jnp.cumsum(group_sizes) - group_sizes
    return starts, (group_sizes + b - 1) // b


def _silu_grad(a):
    s = jax.nn.sigmoid(a)
    return s * (1 + a * (1 - s))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def grouped_swiglu(xs, w_gate, w_up, w_down, group_sizes, b):
    """Row r of ``xs`` [R, d] (sorted by expert, ``group_sizes`` [E] rows each, R = sum) through its expert's
    SwiGLU ``(silu(x W_gate) * (x W_up)) W_down`` -> [R, d], in blocks of ``b`` rows."""
    return _forward(xs, w_gate, w_up, w_down, group_sizes, b)[0]


def _forward(xs, w_gate, w_up, w_down, group_sizes, b):
    rows, d = xs.shape
    n_experts, _, f = w_gate.shape
    starts, n_blocks = _blocks(group_sizes, b)
    xp = jnp.pad(xs, ((0, b), (0, 0)))  # a last block may run up to b - 1 rows past the end

    def expert(e, carry):
        wg, wu, wd = w_gate[e], w_up[e], w_down[e]

        def block(i, carry):
            out, pre_gate, pre_up = carry
            r0 = starts[e] + i * b
            mine = (jnp.arange(b) < group_sizes[e] - i * b)[:, None]
            xb = jax.lax.dynamic_slice_in_dim(xp, r0, b)
            a, u = xb @ wg, xb @ wu
            o = (jax.nn.silu(a) * u) @ wd
            return tuple(
                jax.lax.dynamic_update_slice_in_dim(
                    buf, jnp.where(mine, new, jax.lax.dynamic_slice_in_dim(buf, r0, b)), r0, 0
                )
                for buf, new in ((out, o), (pre_gate, a), (pre_up, u))
            )

        return jax.lax.fori_loop(0, n_blocks[e], block, carry)

    zeros = jnp.zeros((rows + b, d), xs.dtype), jnp.zeros((rows + b, f), xs.dtype)
    out, pre_gate, pre_up = jax.lax.fori_loop(0, n_experts, expert, (zeros[0], zeros[1], zeros[1]))
    return out[:rows], (xp, pre_gate, pre_up)


def _fwd(xs, w_gate, w_up, w_down, group_sizes, b):
    out, (xp, pre_gate, pre_up) = _forward(xs, w_gate, w_up, w_down, group_sizes, b)
    return out, (xp, pre_gate, pre_up, w_gate, w_up, w_down, group_sizes)


def _bwd(b, res, g_out):
    xp, pre_gate, pre_up, w_gate, w_up, w_down, group_sizes = res
    rows = g_out.shape[0]
    n_experts, d, f = w_gate.shape
    starts, n_blocks = _blocks(group_sizes, b)
    gp = jnp.pad(g_out, ((0, b), (0, 0)))
    acc = jnp.float32

    def expert(e, carry):
        dx, dwg, dwu, dwd = carry
        wg, wu, wd = w_gate[e], w_up[e], w_down[e]

        def block(i, carry):
            dx, gwg, gwu, gwd = carry
            r0 = starts[e] + i * b
            mine = (jnp.arange(b) < group_sizes[e] - i * b)[:, None]
            xb = jax.lax.dynamic_slice_in_dim(xp, r0, b)
            a = jax.lax.dynamic_slice_in_dim(pre_gate, r0, b)
            u = jax.lax.dynamic_slice_in_dim(pre_up, r0, b)
            g = jnp.where(mine, jax.lax.dynamic_slice_in_dim(gp, r0, b), 0)  # rows of the next expert: 0
            sa = jax.nn.silu(a)
            gwd = gwd + jnp.matmul((sa * u).T, g, preferred_element_type=acc)
            dh = g @ wd.T
            da, du = dh * u * _silu_grad(a), dh * sa
            gwg = gwg + jnp.matmul(xb.T, da, preferred_element_type=acc)
            gwu = gwu + jnp.matmul(xb.T, du, preferred_element_type=acc)
            dxb = da @ wg.T + du @ wu.T
            old = jax.lax.dynamic_slice_in_dim(dx, r0, b)
            dx = jax.lax.dynamic_update_slice_in_dim(dx, jnp.where(mine, dxb, old), r0, 0)
            return dx, gwg, gwu, gwd

        local = jnp.zeros((d, f), acc), jnp.zeros((f, d), acc)
        dx, gwg, gwu, gwd = jax.lax.fori_loop(0, n_blocks[e], block, (dx, local[0], local[0], local[1]))
        return (dx, dwg.at[e].set(gwg.astype(dwg.dtype)), dwu.at[e].set(gwu.astype(dwu.dtype)),
                dwd.at[e].set(gwd.astype(dwd.dtype)))  # fmt: skip

    init = (jnp.zeros_like(xp), jnp.zeros_like(w_gate), jnp.zeros_like(w_up), jnp.zeros_like(w_down))
    dx, dwg, dwu, dwd = jax.lax.fori_loop(0, n_experts, expert, init)
    return dx[:rows], dwg, dwu, dwd, None


grouped_swiglu.defvjp(_fwd, _bwd)
