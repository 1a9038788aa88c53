"""Block-sparse dispatch: dropless, static shapes, a grouped SwiGLU over expert-sorted rows in plain XLA.

MegaBlocks (Gale et al. 2022, arXiv 2211.15841) without a custom kernel. The N·k assignments are sorted by
expert (stable, so each expert's rows keep token order) into one [N·k, d] array; expert e owns the contiguous
rows ``[start_e, start_e + g_e)``. The experts' SwiGLU runs block by block, each block one [c, d] x [d, f]
product with its expert's weights. Block sizes are powers of two ``B = sizes[0] > ... > b = sizes[-1]``: an
expert's rows go in ``g_e // B`` blocks of B, then one block of each smaller size that fits what is left
(the binary digits of ``g_e mod B``), then one last block of b for the rest (< b rows). The work is the routed
rows plus at most ``b - 1`` rows per expert (at most E·(b-1) in all, the bound of the issue), while most rows
run in large blocks near the matmul peak; nothing is dropped and no [E, capacity, d] buffer exists.

The last block of an expert reads up to ``b - 1`` rows past its group (the next experts' rows, or the zero
tail of the buffer). Its writes are not masked: experts run in ascending order, so every such row is written
again, correctly, by its own expert afterwards (the tail is cut off). In the backward pass those rows get a
zero cotangent, so they add nothing to any gradient.

Why a loop over blocks rather than one batched einsum over blocks with gathered weights: on the 2-core CPU the
einsum copies one [d, f] weight per block (M·d·f floats, M = ceil(N·k/b) + E blocks) and runs every one of the
M static blocks, used or not; the loop reads each expert's weights once, runs only the blocks in use, and
keeps a block's activations in cache across the three products (docs/model.md has the measurements).
A ``jax.custom_vjp`` gives the backward pass the same structure (JAX's own transpose of a loop would carry a
zero [E, d, f] cotangent per step); the weight gradients accumulate per expert in float32.

Block sizes: ``block_sizes(...)`` (rule and measurements in its docstring and docs/model.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from moelab.model.dispatch.sorted import through_sorted_groups

#: Smallest and largest block (rows) of the CPU rule.
MIN_BLOCK, MAX_BLOCK = 32, 128
#: Up to this many experts the loop over experts is unrolled at trace time (a static slice of each expert's
#: weights, no outer while loop). On the 2-core CPU (2026-12-01, loaded, side by side) the FFN's forward and
#: backward alone at the ladder's E = 8 shapes (d 120-152, 1,024 rows) ran 1.4-2.0x faster than with a
#: ``fori_loop`` over experts; the whole training step of the ladder's E = 8 runs 3-11% faster (8e4: 22.6 ->
#: 20.0 ms, 3.2e5: 72.1 -> 67.7, 8e5: 136.8 -> 132.2). At E = 64 unrolling compiled 4.5x longer (76 s
#: against 17 s), so larger E keep the loop (docs/model.md).
UNROLL_MAX_EXPERTS = 16


def block_sizes(n_rows: int, n_experts: int, backend: str | None = None) -> tuple[int, ...]:
    """Block sizes ``(B, B/2, ..., b)`` for ``n_rows = N·k`` assignments over ``n_experts`` experts.

    CPU: b = 32 (at most 31 wasted rows per expert) and B the largest power of two <= the mean group size
    N·k / E, within [32, 128]. Why 128 at most: a block's activations (x, the two pre-activations, the
    output: c·(d + 3f) floats) then stay in the 4 MiB L2 cache of a core of the 2-core machine beside the
    expert's weights, where 512-row blocks spill it; in side-by-side timings of the FFN forward and backward
    (d 256, E = 8 and 16, 2026-11-30, load average 30-45) blocks of 512 ran 1.3-1.7x slower than blocks of
    128, and 128 was not slower than 64 (docs/model.md). Other backends: one size, 128 rows, a tile of the
    GPU/TPU matrix units (those backends are meant to use ``ragged_dot`` where it compiles to a grouped GEMM,
    ``moelab.model.dispatch.resolve``).
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return (128,)
    big = MIN_BLOCK
    while big * 2 <= min(MAX_BLOCK, n_rows / n_experts):
        big *= 2
    sizes = [big]
    while sizes[-1] > MIN_BLOCK:
        sizes.append(sizes[-1] // 2)
    return tuple(sizes)


def dispatch(x, top_idx, top_w, w_gate, w_up, w_down, *, capacity_factor=None, overflow=None, key=None,
             block=None):  # fmt: skip
    """Dropless dispatch with the signature of ``reference.dispatch`` (``capacity_factor``, ``overflow`` and
    ``key`` unused). ``block`` (an int, or decreasing powers of two) overrides ``block_sizes``'s rule."""
    del capacity_factor, overflow, key  # dropless: no capacity, no overflow
    n_rows, n_experts = top_idx.size, w_gate.shape[0]
    if block is None:
        sizes = block_sizes(n_rows, n_experts)
    else:
        sizes = (block,) if isinstance(block, int) else tuple(block)
    return through_sorted_groups(
        x, top_idx, top_w, n_experts, lambda xs, gs: grouped_swiglu(xs, w_gate, w_up, w_down, gs, sizes)
    )


def _for_blocks(start, rows, sizes, body, carry):
    """``carry = body(r0, c, n_mine, carry)`` over the blocks of one expert's rows ``[start, start + rows)``
    (see the module docstring); ``c`` is the static block size, ``n_mine <= c`` its rows of this expert."""
    big = sizes[0]

    def once(
        take, r0, c, n_mine, carry
    ):  # a loop of 0 or 1 trips: updates the carry in place, as a loop does
        return jax.lax.fori_loop(0, take.astype(jnp.int32), lambda _, cr: body(r0, c, n_mine, cr), carry)

    carry = jax.lax.fori_loop(0, rows // big, lambda i, cr: body(start + i * big, big, big, cr), carry)
    r0, left = start + rows // big * big, rows % big
    for c in sizes[1:]:
        take = left >= c
        carry = once(take, r0, c, c, carry)
        r0, left = r0 + take * c, left - take * c
    return once(left > 0, r0, sizes[-1], left, carry)


def _over_experts(n_experts: int, expert, carry):
    """``carry = expert(e, carry)`` for e = 0..n_experts-1 in order: unrolled up to UNROLL_MAX_EXPERTS, else a
    ``fori_loop``."""
    if n_experts > UNROLL_MAX_EXPERTS:
        return jax.lax.fori_loop(0, n_experts, expert, carry)
    for e in range(n_experts):
        carry = expert(e, carry)
    return carry


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def grouped_swiglu(xs, w_gate, w_up, w_down, group_sizes, sizes):
    """Row r of ``xs`` [R, d] (sorted by expert, ``group_sizes`` [E] rows each, R = sum) through its expert's
    SwiGLU ``(silu(x W_gate) * (x W_up)) W_down`` -> [R, d], in blocks of the static ``sizes``."""
    return _forward(xs, w_gate, w_up, w_down, group_sizes, sizes)[0]


def _forward(xs, w_gate, w_up, w_down, group_sizes, sizes):
    rows, d = xs.shape
    n_experts, _, f = w_gate.shape
    starts = jnp.cumsum(group_sizes) - group_sizes
    xp = jnp.pad(xs, ((0, sizes[0]), (0, 0)))  # a last block may run past the end

    def expert(e, carry):
        wg, wu, wd = w_gate[e], w_up[e], w_down[e]

        def block(r0, c, n_mine, carry):
            del n_mine  # rows past the group are rewritten by their own (later) expert
            out, pre_gate, pre_up = carry
            xb = jax.lax.dynamic_slice_in_dim(xp, r0, c)
            a, u = xb @ wg, xb @ wu
            o = (jax.nn.silu(a) * u) @ wd
            return tuple(jax.lax.dynamic_update_slice_in_dim(buf, new, r0, 0)
                         for buf, new in ((out, o), (pre_gate, a), (pre_up, u)))  # fmt: skip

        return _for_blocks(starts[e], group_sizes[e], sizes, block, carry)

    padded = rows + sizes[0]
    init = (
        jnp.zeros((padded, d), xs.dtype),
        jnp.zeros((padded, f), xs.dtype),
        jnp.zeros((padded, f), xs.dtype),
    )
    out, pre_gate, pre_up = _over_experts(n_experts, expert, init)
    return out[:rows], (xp, pre_gate, pre_up)


def _fwd(xs, w_gate, w_up, w_down, group_sizes, sizes):
    out, (xp, pre_gate, pre_up) = _forward(xs, w_gate, w_up, w_down, group_sizes, sizes)
    return out, (xp, pre_gate, pre_up, w_gate, w_up, w_down, group_sizes)


def _silu_grad(a):
    s = jax.nn.sigmoid(a)
    return s * (1 + a * (1 - s))


def _bwd(sizes, res, g_out):
    xp, pre_gate, pre_up, w_gate, w_up, w_down, group_sizes = res
    rows = g_out.shape[0]
    n_experts, d, f = w_gate.shape
    starts = jnp.cumsum(group_sizes) - group_sizes
    gp = jnp.pad(g_out, ((0, sizes[0]), (0, 0)))
    acc = jnp.float32

    def expert(e, carry):
        dx, dwg, dwu, dwd = carry
        wg, wu, wd = w_gate[e], w_up[e], w_down[e]

        def block(r0, c, n_mine, carry):
            dx, gwg, gwu, gwd = carry
            xb = jax.lax.dynamic_slice_in_dim(xp, r0, c)
            a = jax.lax.dynamic_slice_in_dim(pre_gate, r0, c)
            u = jax.lax.dynamic_slice_in_dim(pre_up, r0, c)
            mine = (jnp.arange(c) < n_mine)[:, None]
            g = jnp.where(mine, jax.lax.dynamic_slice_in_dim(gp, r0, c), 0)  # other experts' rows: 0
            sa = jax.nn.silu(a)
            gwd = gwd + jnp.matmul((sa * u).T, g, preferred_element_type=acc)
            dh = g @ wd.T
            da, du = dh * u * _silu_grad(a), dh * sa
            gwg = gwg + jnp.matmul(xb.T, da, preferred_element_type=acc)
            gwu = gwu + jnp.matmul(xb.T, du, preferred_element_type=acc)
            dx = jax.lax.dynamic_update_slice_in_dim(dx, da @ wg.T + du @ wu.T, r0, 0)  # rewritten later
            return dx, gwg, gwu, gwd

        local = jnp.zeros((d, f), acc), jnp.zeros((f, d), acc)
        dx, gwg, gwu, gwd = _for_blocks(starts[e], group_sizes[e], sizes, block, (dx, local[0], *local))
        return (dx, dwg.at[e].set(gwg.astype(dwg.dtype)), dwu.at[e].set(gwu.astype(dwu.dtype)),
                dwd.at[e].set(gwd.astype(dwd.dtype)))  # fmt: skip

    init = (jnp.zeros_like(xp), jnp.zeros_like(w_gate), jnp.zeros_like(w_up), jnp.zeros_like(w_down))
    dx, dwg, dwu, dwd = _over_experts(n_experts, expert, init)
    return dx[:rows], dwg, dwu, dwd, None


grouped_swiglu.defvjp(_fwd, _bwd)
