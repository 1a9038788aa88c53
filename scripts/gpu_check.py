#!/usr/bin/env python
"""GPU check: bf16 training steps of a Hunyuan-Large-shaped model cut to fit one H100/H200.

What it runs: ``hunyuan-large`` with its widths (d_model 6400, 80 query / 8 KV heads of 80, qk-norm,
cross-layer KV pairs, 16 routed experts of width 18304 + 1 shared, top-1, vocab 128512) but only as many
layers as fit one card (an even number, at least 2, for the K/V sharing pairs; on an 80 GB card even two
layers of 16 experts do not fit, so the routed experts are halved until they do), bf16 parameters and
activations, the dropless grouped-matmul dispatch (``jax.lax.ragged_dot``), through the trainer's own step
(``moelab.train.step.make_train_step``: loss, router losses, non-finite guard) with plain SGD as its optimiser
(an fp32 Adam state of even one such layer, 6.1B parameters x 16 bytes, would not fit one card: the check
measures the step, not the optimiser).

What it prints: compile time, step time, tokens/s, model FLOPs per step from ``moelab.accounting``, and the
model FLOP utilisation (MFU) against (a) the card's *measured* bf16 matmul rate (an 8192^3 product, timed
here) and (b) the datasheet peak. One JSON line at the end carries every figure (also written to --out).

Budget: under 5 minutes including compilation on an H100 (``--max-seconds`` bounds the timed loop).
``--smoke`` runs the same path on tiny shapes on CPU (it is part of the test suite).

``--strategies`` (issue 18) instead times the dispatch strategies in bf16 through the same production step
(``moelab.bench.bench_dispatch``: the trainer's step and AdamW, alternating rounds): a dense model of
d_model 1024 and FFN width 4096 against E = 8 top-1, E = 16 top-2 and E = 64 top-8 at equal activated
parameters under ``capacity`` (factor 1.25), ``dropless`` (``ragged_dot``) and ``blocksparse``, with each
step's MFU against the measured bf16 matmul rate, and says whether this backend's ``ragged_dot`` compiled
to a grouped GEMM (what ``dispatch: auto`` picks follows from it).

    python scripts/gpu_check.py                 # on the GPU machine
    python scripts/gpu_check.py --strategies    # the dispatch table on the GPU machine
    python scripts/gpu_check.py --smoke         # anywhere, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from moelab.accounting import param_counts, train_flops_per_token
from moelab.config import ModelConfig
from moelab.files import write_text_atomic
from moelab.parallel.chips import CHIPS
from moelab.presets import get_preset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, any backend (CPU test)")
    p.add_argument("--layers", type=int, default=0, help="layers (default: as many as fit, even, >= 2)")
    p.add_argument("--batch", type=int, default=0, help="sequences per step (default 4; smoke 2)")
    p.add_argument("--seq", type=int, default=0, help="tokens per sequence (default 2048; smoke 32)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop the timed loop after this long")
    p.add_argument("--matmul", type=int, default=0, help="matmul size for the measured peak (default 8192)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result here (atomically)")
    p.add_argument("--strategies", action="store_true", help="time the dispatch strategies (issue 18)")
    return p.parse_args(argv)


#: --strategies: (n_experts, top_k, d_expert) at activated FFN width 4096 (smoke: one shape of width 64)
STRATEGY_SHAPES = ((8, 1, 4096), (16, 2, 2048), (64, 8, 512))
SMOKE_STRATEGY_SHAPES = ((4, 2, 32),)


def strategy_timings(args) -> dict:
    """The dispatch table of issue 18 in bf16 on the default device (see the module docstring)."""
    import jax  # JAX and what imports it: after main() sets XLA_PYTHON_CLIENT_MEM_FRACTION (read at start)

    from moelab.bench import _print_dispatch, bench_dispatch
    from moelab.model.dispatch import ragged_dot_is_grouped, resolve

    if args.smoke:
        base = ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16)
        shapes, batch, seq = SMOKE_STRATEGY_SHAPES, args.batch or 2, args.seq or 16
    else:
        base = ModelConfig(vocab_size=32768, d_model=1024, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=128)
        shapes, batch, seq = STRATEGY_SHAPES, args.batch or 8, args.seq or 2048
    base = base.replace(dtype="bfloat16", param_dtype="bfloat16", max_seq_len=seq)
    size = args.matmul or (256 if args.smoke else 8192)
    # every strategy is timed (max_flops_ratio 1e9): ragged_dot's FLOPs are what the table is there to show
    res = bench_dispatch(base, shapes, seq, batch, steps=max(1, args.steps // 3), rounds=3,
                         peak_sizes=(size,), max_flops_ratio=1e9)  # fmt: skip
    dev = jax.devices()[0]
    backend = jax.default_backend()
    res.update(device=getattr(dev, "device_kind", str(dev)), platform=dev.platform,
               ragged_dot_grouped=ragged_dot_is_grouped(backend), auto=resolve("auto", backend))  # fmt: skip
    _print_dispatch(res)
    print(f"ragged_dot is a grouped GEMM here: {res['ragged_dot_grouped']}; dispatch auto -> {res['auto']}")
    return res


def measured_matmul_flops(n: int, dtype, reps: int = 10) -> float:
    """bf16 FLOP/s of an n x n x n product on the default device (median of ``reps`` timed runs)."""
    import jax  # after main() sets XLA_PYTHON_CLIENT_MEM_FRACTION (JAX reads it when it starts)

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    times.sort()
    return 2.0 * n**3 / times[len(times) // 2]


def _rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.2f} GFLOP/s"


def model_config(args, hbm_bytes: float | None):
    if args.smoke:
        cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                          cla_share=2, qk_norm=True, max_seq_len=64, n_experts=4, top_k=1, n_shared_experts=1,
                          d_expert=128, d_shared=128, dispatch="dropless")
        return cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    base = get_preset("hunyuan-large").replace(dispatch="dropless", dtype="bfloat16", param_dtype="bfloat16",
                                               max_seq_len=max(args.seq, 4096))
    # bf16 weights + bf16 gradients (4 B/param) in ~60% of HBM; the rest for activations, logits and XLA's
    # workspace. Keep every width; add layer pairs while they fit, and if even one pair does not fit, halve
    # the number of routed experts (a 16-expert pair is 12.2B parameters, 49 GB: too much for an 80 GB card).
    budget = 0.6 * (hbm_bytes or 80e9)

    def weight_bytes(c) -> float:
        return 4.0 * param_counts(c).total_with_embedding

    cfg = base.replace(n_layers=args.layers or 2)
    if args.layers:
        return cfg
    while weight_bytes(cfg) > budget and cfg.n_experts > 2:
        cfg = cfg.replace(n_experts=cfg.n_experts // 2)
    while weight_bytes(cfg.replace(n_layers=cfg.n_layers + 2)) <= budget:
        cfg = cfg.replace(n_layers=cfg.n_layers + 2)
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    # JAX preallocates 75% of a GPU's memory by default; the sizing below assumes 90% (set before JAX starts)
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
    if args.strategies:
        line = json.dumps(strategy_timings(args))
        print(line)
        if args.out:
            write_text_atomic(args.out, line + "\n")
        return 0
    # JAX and what imports it come after the line above that sets XLA_PYTHON_CLIENT_MEM_FRACTION
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from moelab.model import Transformer
    from moelab.train.step import make_train_step

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    hbm = float(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None
    batch = args.batch or (2 if args.smoke else 4)
    seq = args.seq or (32 if args.smoke else 2048)
    cfg = model_config(args, hbm)
    counts = param_counts(cfg)
    mem = f", memory limit {hbm / 2**30:.1f} GiB" if hbm else ""
    print(f"device: {kind} ({dev.platform}){mem}")
    print(f"model: hunyuan-shaped, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_experts}+"
          f"{cfg.n_shared_experts} experts of {cfg.d_expert}, vocab {cfg.vocab_size}; "
          f"{counts.total_with_embedding / 1e9:.2f}B params, "
          f"{counts.active_with_embedding / 1e9:.2f}B activated",
          flush=True)

    t0 = time.perf_counter()
    peak_measured = measured_matmul_flops(args.matmul or (256 if args.smoke else 8192), jnp.bfloat16)
    print(f"measured bf16 matmul: {_rate(peak_measured)}", flush=True)

    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    del model
    tx = optax.sgd(1.0)  # the production step multiplies the update by its lr argument
    state = (params, tx.init(params), jnp.asarray(-1, jnp.int32), rest)  # the step's state, in = out
    train_step = make_train_step(graphdef, tx, cfg)  # the trainer's own step (moelab/train/step.py)
    lr, seed = np.float32(1e-4), np.int32(0)

    def step(state, batch, i):
        *state, metrics = train_step(*state, batch, np.int32(i), lr, seed)
        return tuple(state), metrics

    key = jax.random.key(1)
    batches = [jax.random.randint(jax.random.fold_in(key, i), (batch, seq + 1), 0, cfg.vocab_size, jnp.int32)
               for i in range(2)]

    t = time.perf_counter()
    state, metrics = step(state, batches[0], 0)
    first_loss = float(metrics["loss"])
    compile_s = time.perf_counter() - t
    print(f"compile + first step: {compile_s:.1f} s, loss {first_loss:.3f}", flush=True)

    times = []
    loop_start = time.perf_counter()
    for i in range(args.steps):
        t = time.perf_counter()
        state, metrics = step(state, batches[i % 2], i + 1)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t)
        if time.perf_counter() - loop_start > args.max_seconds:
            break
    times.sort()
    step_s = times[len(times) // 2]
    tokens = batch * seq
    flops = train_flops_per_token(cfg, seq) * tokens
    chip = next((c for c in CHIPS.values() if c.name.split("-")[0] in kind.lower()), None)
    result = {
        "device": kind, "platform": dev.platform, "layers": cfg.n_layers, "batch": batch, "seq": seq,
        "dispatch": cfg.dispatch, "dtype": cfg.dtype, "params": counts.total_with_embedding,
        "active_params": counts.active_with_embedding, "steps_timed": len(times), "compile_s": compile_s,
        "step_s": step_s, "tokens_per_s": tokens / step_s, "flops_per_step": flops,
        "model_tflops_per_s": flops / step_s / 1e12, "measured_matmul_tflops_per_s": peak_measured / 1e12,
        "mfu_vs_measured": flops / step_s / peak_measured,
        "mfu_vs_datasheet": flops / step_s / chip.peak_bf16_flops if chip else None,
        "loss_first": first_loss, "loss_last": float(metrics["loss"]),
        "total_s": time.perf_counter() - t0,
    }
    print(f"step: {step_s * 1e3:.1f} ms (median of {len(times)}), {result['tokens_per_s']:,.0f} tokens/s, "
          f"{_rate(flops / step_s)} of model FLOPs")
    print(f"MFU: {result['mfu_vs_measured']:.1%} of the measured bf16 matmul rate"
          + (f", {result['mfu_vs_datasheet']:.1%} of the datasheet peak" if chip else ""))
    line = json.dumps(result)
    print(line)
    if args.out:
        write_text_atomic(args.out, line + "\n")
    return 0 if all(map(lambda v: v == v, (result["loss_first"], result["loss_last"]))) else 1


if __name__ == "__main__":
    sys.exit(main())
