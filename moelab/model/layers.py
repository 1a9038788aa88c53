"""Building blocks: parameter helper, RMSNorm, rotary embeddings, SwiGLU.

Every parameter is an ``nnx.Param`` whose ``out_sharding`` metadata holds its logical axis names
(vocabulary in docs/architecture.md); ``eager_sharding=False`` keeps construction mesh-free, and
``moelab.parallel`` maps the names to mesh axes (``nnx.get_partition_spec(nnx.state(model, nnx.Param))``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], std: float, dtype) -> nnx.Param:
    """A normal(0, std) weight (or ones when std is None) tagged with its logical axis names."""
    assert len(shape) == len(axes), (shape, axes)
    if std is None:
        value = jnp.ones(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


#: Variable metadata keys that may hold logical axis names (Flax's ``out_sharding`` / ``sharding_names``, ...)
LOGICAL_KEYS = ("out_sharding", "sharding_names", "logical_axes", "sharding")


def is_variable(x) -> bool:
    """``is_leaf`` for ``jax.tree`` functions that should stop at NNX Variables (and read their metadata)."""
    return isinstance(x, nnx.Variable)


def logical_axes(var: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names of a Variable (one per array axis), or None when it carries none."""
    meta = var.get_metadata()
    for key in LOGICAL_KEYS:
        names = meta.get(key)
        if names:
            return tuple(names)
    return None


class RMSNorm(nnx.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), statistics in float32, learned scale of size ``dim``."""

    def __init__(self, dim: int, eps: float, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (dim,), ("norm",), None, param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding (Su et al. 2021) on the last axis of x[..., T, H, D] (rotate-half).

    positions: [T] integer positions; frequencies ``theta ** (-2i / D)``.
    """
    d = x.shape[-1]
    half = d // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / d)
    angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [T, half]
    cos = jnp.cos(angles)[:, None, :]
    sin = jnp.sin(angles)[:, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half : 2 * half]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    if d % 2:  # odd head_dim: the last channel is left unrotated
        rotated = jnp.concatenate([rotated, x32[..., -1:]], axis=-1)
    return rotated.astype(x.dtype)


def matmul(x: jax.Array, w: jax.Array, n_in: int = 1) -> jax.Array:
    """``x[..., in...] @ w[in..., out...]`` as one 2-D product (``n_in`` contracted trailing axes of x).

    XLA's CPU backend runs a 2-D ``[M, K] @ [K, N]`` dot on its fast matmul kernel, but a dot_general
    contracting several axes (e.g. the weight gradient of ``btd,df->btf``, which contracts b and t) can fall
    back to a slow loop, so every projection is flattened to 2-D here.
    """
    lead, k_shape = x.shape[: x.ndim - n_in], x.shape[x.ndim - n_in :]
    out_shape = w.shape[n_in:]
    k, m = math.prod(k_shape), math.prod(lead)
    y = x.reshape(m, k) @ w.reshape(k, math.prod(out_shape))
    return y.reshape(*lead, *out_shape)


def swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    """SwiGLU feed-forward (Shazeer 2020): ``(silu(x W_gate) * (x W_up)) W_down``."""
    return matmul(jax.nn.silu(matmul(x, gate)) * matmul(x, up), down)


class SwiGLU(nnx.Module):
    """Dense SwiGLU of width ``width``: parameters ``gate``, ``up`` [embed, mlp] and ``down`` [mlp, embed]."""

    def __init__(self, d_model: int, width: int, std: float, out_std: float, param_dtype, rngs: nnx.Rngs):
        self.gate = param(rngs, (d_model, width), ("embed", "mlp"), std, param_dtype)
        self.up = param(rngs, (d_model, width), ("embed", "mlp"), std, param_dtype)
        self.down = param(rngs, (width, d_model), ("mlp", "embed"), out_std, param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        return swiglu(x, self.gate[...].astype(dt), self.up[...].astype(dt), self.down[...].astype(dt))
