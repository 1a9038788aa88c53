"""``moelab bench step``: throughput of a full training step and model FLOP utilisation (MFU).

A step is the trainer's own step (``moelab.train.step.make_train_step``: forward, backward, the AdamW update
of ``moelab.train.optim`` and the non-finite guard) of ``moelab.model.Transformer`` on random tokens, with
donated buffers. Reported per model:

- ``tokens_per_s`` = batch · seq_len / step time (best of ``--rounds`` timed rounds of ``--steps`` steps);
- ``flops_per_s`` = ``moelab.accounting.train_flops_per_token(cfg, seq_len)`` · tokens_per_s (model FLOPs: the
  capacity padding, dispatch and optimiser work are not counted, as in PaLM's MFU, Chowdhery et al. 2022);
- ``mfu`` = flops_per_s / the float32 matmul peak XLA reaches on this machine, measured in the same run
  between the timed rounds (best of square products of size 1024 and 2048);
- for an MoE, ``moe_dense_ratio`` = MoE step time / the step time of its dense twin at equal activated
  parameters (same attention, one FFN of width top_k·d_expert + n_shared·d_shared), the two timed in
  alternating rounds so that both see the same machine load.

``--target moe-ratio`` and ``--target dense-mfu`` are the two benchmarks of issue 3 (see docs/model.md);
without a target or model flags both run. ``--target dispatch`` (issue 18) times, in one set of alternating
rounds, the dense model of activated FFN width 1024 (d_model 256) and three MoE shapes at equal activated
parameters (E = 8 top-1, E = 16 top-2, E = 64 top-8) under each dispatch strategy (``capacity`` at capacity
factor 1.25, ``dropless`` = ragged_dot, ``blocksparse``), reporting each step time over the dense one and the
step's FLOPs as XLA compiled them over the dense step's (padding and dense fallbacks show there; XLA
counts a loop body once, so blocksparse has no such figure). A strategy
whose compiled step exceeds ``--max-flops-ratio`` times the dense FLOPs (ragged_dot's dense masked product on
CPU) is compiled but not timed. Beside the strategies, each shape has a ``floor`` row: the same step with the
grouped FFN replaced by one plain SwiGLU of expert 0's weights over all N·k sorted rows (``floor_dispatch``;
the router, the sort, gather and scatter, every expert's parameters and their AdamW update all kept). It is
not a dispatch (every row goes through one expert) but what the step would cost if the grouped product ran
exactly as fast as one dense product of the same rows: the least any sort-based dropless dispatch can reach
on the machine, against which the strategies' ratios are read. ``--json PATH`` writes the results atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

from moelab.errors import MoelabError
from moelab.files import write_json_atomic

TARGETS = {
    # issue 3: MoE (8 experts, top-2, width 1024, capacity 1.25) vs dense width 2048; limit 1.10
    "moe-ratio": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=64, n_experts=8, top_k=2,
                      d_expert=1024, capacity_factor=1.25, seq_len=256, batch=16),
    # issue 3: dense d_model 512, width 2048; MFU >= 50% of the XLA float32 matmul peak
    "dense-mfu": dict(d_model=512, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=64, n_experts=1, top_k=1,
                      d_expert=2048, seq_len=256, batch=16),
}  # fmt: skip
# issue 18: equal activated parameters (FFN width top_k·d_expert = 1024), d_model 256, 4 layers
DISPATCH_BENCH = dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=64, seq_len=256, batch=16)
DISPATCH_SHAPES = ((8, 1, 1024), (16, 2, 512), (64, 8, 128))  # (n_experts, top_k, d_expert)
DISPATCH_STRATEGIES = ("capacity", "dropless", "blocksparse")
MODEL_FLAGS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "n_experts", "top_k", "d_expert",
               "n_shared_experts", "d_shared", "capacity_factor", "dispatch", "overflow", "cla_share",
               "vocab_size")  # fmt: skip


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    sub.required = True
    p = sub.add_parser(
        "step", help="tokens/s, FLOP/s and MFU of a training step; MoE / dense step-time ratio"
    )
    p.add_argument(
        "--target",
        choices=sorted([*TARGETS, "dispatch"]),
        action="append",
        help="issue 3's moe-ratio or dense-mfu, issue 18's dispatch (repeatable; default: moe-ratio and "
        "dense-mfu unless a model is given)",
    )
    p.add_argument(
        "--max-flops-ratio",
        type=float,
        default=8.0,
        help="--target dispatch: do not time a strategy whose compiled step has more than this many times "
        "the dense step's FLOPs (default 8)",
    )
    p.add_argument("--preset", help="a named model (moelab.presets), e.g. moe8-1m")
    for name in MODEL_FLAGS:
        kind = float if name == "capacity_factor" else str if name in ("dispatch", "overflow") else int
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=f"ModelConfig.{name}")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the best counts (default 3)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense twin of an MoE model")
    p.add_argument(
        "--peak-size",
        type=int,
        action="append",
        dest="peak_sizes",
        help="matrix size of the matmul peak (repeatable; default 1024 and 2048)",
    )
    p.add_argument("--json", type=Path, help="write the results to this JSON file (atomically)")

    f = sub.add_parser("fit", help="4,500-start Chinchilla grid fit and 1,000 bootstrap refits (issue 6)")
    f.add_argument("--bootstrap", type=int, default=1000, help="bootstrap refits (default 1000)")
    f.add_argument("--repeats", type=int, default=2, help="timed repeats; the first includes compilation")
    f.add_argument("--json", type=Path, help="write the results to this JSON file (atomically)")

    lw = sub.add_parser("laws", help="every law on every bundled dataset (and RESULTS): held-out errors")
    lw.add_argument("results", nargs="*", help="results folders to add to the bundled datasets")
    lw.add_argument("--dataset", action="append", help="bundled datasets to use (repeatable; default: all)")
    lw.add_argument("--laws", default=None, metavar="A,B", help="comma-separated laws (default: all)")
    lw.add_argument("--json", type=Path, help="write the results to this JSON file (atomically)")

    s = sub.add_parser("sweep", help="Ray overhead: N trials through Ray vs back to back (issue 5)")
    s.add_argument("--trials", type=int, default=8, help="trials (default 8)")
    s.add_argument("--concurrency", type=int, nargs="+", default=[1, 2], help="Ray concurrencies")
    s.add_argument("--tokens", type=int, default=64 * 8 * 600, help="training tokens per trial")
    s.add_argument("--json", type=Path, help="write the results to this JSON file (atomically)")


def run(args: argparse.Namespace) -> int:
    if args.bench == "fit":
        return _run_other(args, "fit")
    if args.bench == "sweep":
        return _run_other(args, "sweep")
    if args.bench == "laws":
        return _run_laws(args)
    return _run_step(args)


def _run_laws(args: argparse.Namespace) -> int:
    """``bench laws`` (analysis.bench_laws): the law x dataset table, Markdown on stdout."""
    from analysis.bench_laws import format_table, run_laws_bench  # analysis is imported only when asked
    from analysis.datasets import get
    from analysis.laws import get_law

    for name in args.dataset or []:
        get(name)
    laws = None if args.laws is None else [get_law(x.strip()).name for x in args.laws.split(",") if x.strip()]
    results = run_laws_bench(datasets=args.dataset, results=args.results, laws=laws)
    print(format_table(results))
    print(f"\n{results['seconds']:.1f} s on {os.cpu_count()} cores")
    if args.json:
        write_json_atomic(args.json, results)
    return 0


def _run_other(args: argparse.Namespace, which: str) -> int:
    """``bench fit`` (analysis.bench) and ``bench sweep`` (moelab.sweep.bench): print and optionally save."""
    for name in ("bootstrap", "repeats", "trials", "tokens"):
        if getattr(args, name, 1) < 1:
            raise MoelabError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if which == "fit":
        from analysis.bench import run_fit_bench

        results = run_fit_bench(n_boot=args.bootstrap, repeats=args.repeats)
    else:
        if min(args.concurrency) < 1:
            raise MoelabError(f"--concurrency must be >= 1, got {min(args.concurrency)}")
        from moelab.sweep.bench import run_sweep_bench

        results = run_sweep_bench(args.trials, tuple(args.concurrency), args.tokens)
    print(json.dumps(results, indent=1, default=str))
    if args.json:
        write_json_atomic(args.json, results)
    return 0


def _run_step(args: argparse.Namespace) -> int:
    from moelab.config import ModelConfig
    from moelab.presets import get_preset

    for name in ("seq_len", "batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            raise MoelabError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    flags = {n: getattr(args, n) for n in MODEL_FLAGS if getattr(args, n) is not None}
    jobs: list[tuple[str, ModelConfig, int, int]] = []
    if args.preset or flags:
        base = get_preset(args.preset) if args.preset else ModelConfig()
        cfg = base.replace(**flags, max_seq_len=max(base.max_seq_len, args.seq_len))
        jobs.append((args.preset or "custom", cfg, args.seq_len, args.batch))
    targets = args.target or ([] if jobs else sorted(TARGETS))
    for target in targets:
        if target == "dispatch":
            continue
        spec = dict(TARGETS[target])
        seq, batch = spec.pop("seq_len"), spec.pop("batch")
        jobs.append((target, ModelConfig(vocab_size=256, max_seq_len=seq, **spec), seq, batch))

    sizes = tuple(args.peak_sizes or (1024, 2048))
    if min(sizes) < 1:
        raise MoelabError(f"--peak-size must be >= 1, got {min(sizes)}")
    if args.max_flops_ratio <= 0:
        raise MoelabError(f"--max-flops-ratio must be > 0, got {args.max_flops_ratio}")
    results = {"benchmarks": [], "load_avg": os.getloadavg()}
    for name, cfg, seq, batch in jobs:
        res = bench_step(cfg, seq, batch, args.steps, args.rounds, sizes, dense_twin=not args.no_dense)
        res["name"] = name
        results["benchmarks"].append(res)
        _print(res)
    if "dispatch" in targets:
        spec = dict(DISPATCH_BENCH)
        seq, batch = spec.pop("seq_len"), spec.pop("batch")
        base = ModelConfig(vocab_size=256, max_seq_len=seq, **spec)
        res = bench_dispatch(base, DISPATCH_SHAPES, seq, batch, args.steps, args.rounds, sizes,
                             max_flops_ratio=args.max_flops_ratio)  # fmt: skip
        results["dispatch"] = res
        _print_dispatch(res)
    results["load_avg_after"] = os.getloadavg()
    print(f"load average before {_load(results['load_avg'])}, after {_load(results['load_avg_after'])}")
    if args.json:
        write_json_atomic(args.json, results)
    return 0


def matmul_peak(sizes=(1024, 2048), repeats: int = 5, dtype: str = "float32") -> float:
    """Best FLOP/s of a jitted square matrix product over ``sizes`` in ``dtype``."""
    import jax
    import jax.numpy as jnp

    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        f = jax.jit(jnp.matmul)
        f(a, b).block_until_ready()
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def dense_twin(cfg):
    """The dense model at equal activated parameters (router aside): one FFN of the activated width."""
    return cfg.replace(n_experts=1, top_k=1, n_shared_experts=0, d_shared=0,
                       d_expert=cfg.top_k * cfg.d_expert + cfg.n_shared_experts * cfg.d_shared)  # fmt: skip


def make_step(cfg, seq_len: int, batch: int, lr: float = 1e-3):
    """(step, state, tokens): the compiled production train step (``moelab.train.step.make_train_step`` with
    the trainer's AdamW, ``moelab.train.optim.make_optimizer``) as ``step(state, tokens, i) -> (state,
    loss)``, its initial state and a batch of random tokens [batch, seq_len + 1] (seq_len positions trained);
    ``step.xla_flops`` is the compiled step's FLOP count by XLA's cost analysis."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from moelab.model import Transformer
    from moelab.train.config import TrainConfig
    from moelab.train.optim import make_optimizer
    from moelab.train.step import make_train_step, param_labels

    graphdef, params, rest = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = make_optimizer(TrainConfig(lr=lr, seq_len=seq_len, batch_size=batch), param_labels(params))
    train_step = make_train_step(graphdef, tx, cfg)

    state = (params, tx.init(params), jnp.asarray(-1, jnp.int32), rest)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq_len + 1), 0, cfg.vocab_size, dtype=jnp.int32)
    compiled = train_step.lower(*state, tokens, np.int32(0), np.float32(lr), np.int32(0)).compile()

    def step(state, tokens, i):
        *state, metrics = compiled(*state, tokens, np.int32(i), np.float32(lr), np.int32(0))
        return tuple(state), metrics["loss"]

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    step.xla_flops = float(cost["flops"]) if cost and "flops" in cost else None  # XLA's count, None if absent
    return step, state, tokens


def floor_dispatch(x, top_idx, top_w, w_gate, w_up, w_down, **_):
    """The bench's floor, not a dispatch: the dropless strategies' routing
    (``moelab.model.dispatch.sorted.through_sorted_groups``) around one plain SwiGLU of expert 0's weights
    over all N·k sorted rows (module docstring). Equal to every dispatch when every assignment goes to expert
    0 (tests/test_bench.py)."""
    import jax

    from moelab.model.dispatch.sorted import through_sorted_groups

    def ffn(xs, group_sizes):
        del group_sizes  # one product over every row
        return (jax.nn.silu(xs @ w_gate[0]) * (xs @ w_up[0])) @ w_down[0]

    return through_sorted_groups(x, top_idx, top_w, w_gate.shape[0], ffn)


@contextlib.contextmanager
def _tracing_with(strategy: str | None, fn):
    """Within the block, the model traces ``fn`` where its config names ``strategy`` (None: no change)."""
    from moelab.model.dispatch import STRATEGIES

    if strategy is None:
        yield
        return
    saved = STRATEGIES[strategy]
    STRATEGIES[strategy] = fn
    try:
        yield
    finally:
        STRATEGIES[strategy] = saved


def _time_models(models: dict, seq_len, batch, steps, rounds, peak_sizes, max_flops_ratio=None, gated=(),
                 peak_dtype="float32", floors=()):  # fmt: skip
    """Compile every model's step, then time them and the matmul peak in alternating rounds (so that all see
    the same machine load); the best round of each counts. With ``max_flops_ratio``, a model of ``gated``
    whose compiled step has more than that many times the FLOPs of ``models``' first one (XLA's cost
    analysis) is compiled but not timed. The models of ``floors`` (blocksparse configs) are compiled with
    ``floor_dispatch`` in blocksparse's place. Returns ({key: run record}, peak FLOP/s)."""
    runs = {}
    for key, c in models.items():
        t0 = time.perf_counter()
        with _tracing_with("blocksparse" if key in floors else None, floor_dispatch):
            step, state, tokens = make_step(c, seq_len, batch)
        runs[key] = dict(step=step, state=state, tokens=tokens, xla_flops=step.xla_flops, best=1e30,
                         loss=None, compile_s=time.perf_counter() - t0)  # fmt: skip
        first = runs[next(iter(runs))]["xla_flops"]
        over = max_flops_ratio and step.xla_flops and first and step.xla_flops > max_flops_ratio * first
        if key in gated and over:
            runs[key].update(best=None, state=None)  # not timed: drop its buffers
    peak = 0.0
    for r in range(rounds):
        peak = max(peak, matmul_peak(peak_sizes, repeats=2, dtype=peak_dtype))
        for run_ in runs.values():
            if run_["best"] is None:
                continue
            state = run_["state"]
            t0 = time.perf_counter()
            for i in range(steps):
                state, loss = run_["step"](state, run_["tokens"], r * steps + i + 1)
            loss.block_until_ready()
            run_["best"] = min(run_["best"], (time.perf_counter() - t0) / steps)
            run_["state"] = state
            run_["loss"] = float(loss)
    return runs, peak


def _record(cfg, run_: dict, seq_len: int, batch: int, peak: float) -> dict:
    from moelab.accounting import param_counts, train_flops_per_token

    counts = param_counts(cfg)
    rec = dict(step_s=None, tokens_per_s=None, flops_per_s=None, mfu=None, compile_s=run_.get("compile_s"),
               loss=run_["loss"], xla_flops=run_["xla_flops"], active_params=counts.active,
               total_params=counts.total)  # fmt: skip
    if run_["best"] is not None:
        t = run_["best"]
        tps = batch * seq_len / t
        flops = train_flops_per_token(cfg, seq_len) * tps
        rec.update(step_s=t, tokens_per_s=tps, flops_per_s=flops, mfu=flops / peak)
    return rec


def bench_step(cfg, seq_len, batch, steps, rounds, peak_sizes=(1024, 2048), dense_twin: bool = True) -> dict:
    """Time the model (and its dense twin for an MoE) and the matmul peak in alternating rounds, so that all
    see the same machine load; the best round of each counts. See the module docstring."""
    models = {"model": cfg}
    if cfg.is_moe and dense_twin:
        models["dense"] = globals()["dense_twin"](cfg)
    runs, peak = _time_models(models, seq_len, batch, steps, rounds, peak_sizes)
    out = {"seq_len": seq_len, "batch": batch, "matmul_peak_flops": peak, "config": cfg.to_dict()}
    for key, c in models.items():
        out[key] = _record(c, runs[key], seq_len, batch, peak)
    if "dense" in out:
        out["moe_dense_ratio"] = out["model"]["step_s"] / out["dense"]["step_s"]
    return out


def bench_dispatch(base, shapes, seq_len, batch, steps, rounds, peak_sizes=(1024, 2048),
                   strategies=DISPATCH_STRATEGIES, capacity_factor=1.25, max_flops_ratio=8.0):  # fmt: skip
    """Issue 18: the dense model ``base`` (FFN width ``base.d_expert`` is replaced by each shape's
    top_k·d_expert, which must be equal across shapes) against every (n_experts, top_k, d_expert) shape under
    every strategy, all timed in the same alternating rounds. ``blocksparse`` records its block sizes. The
    matmul peak is measured in ``base.dtype`` (bf16 on a GPU, scripts/gpu_check.py)."""
    from moelab.model.dispatch.blocksparse import block_sizes

    widths = {k * f for _, k, f in shapes}
    if len(widths) != 1:
        raise MoelabError(
            f"dispatch shapes must share one activated width top_k·d_expert, got {sorted(widths)}"
        )
    dense = base.replace(n_experts=1, top_k=1, d_expert=widths.pop())
    models = {"dense": dense}
    floors = []
    for e, k, f in shapes:
        for strategy in strategies:
            models[f"E{e}-top{k}/{strategy}"] = base.replace(
                n_experts=e, top_k=k, d_expert=f, dispatch=strategy, capacity_factor=capacity_factor
            )
        floors.append(f"E{e}-top{k}/floor")
        models[floors[-1]] = base.replace(n_experts=e, top_k=k, d_expert=f, dispatch="blocksparse")
    # XLA counts a while loop's body once, so only loop-free strategies have a FLOP count to gate on
    gated = [key for key, c in models.items() if c.dispatch in ("capacity", "dropless")]
    runs, peak = _time_models(models, seq_len, batch, steps, rounds, peak_sizes, max_flops_ratio, gated,
                              peak_dtype=base.dtype, floors=floors)  # fmt: skip
    out = {"seq_len": seq_len, "batch": batch, "matmul_peak_flops": peak, "dtype": base.dtype,
           "capacity_factor": capacity_factor,
           "max_flops_ratio": max_flops_ratio, "dense": _record(dense, runs["dense"], seq_len, batch, peak),
           "shapes": {}}  # fmt: skip
    t_dense, f_dense = out["dense"]["step_s"], out["dense"]["xla_flops"]
    for e, k, f in shapes:
        row = {"n_experts": e, "top_k": k, "d_expert": f, "block_sizes": block_sizes(seq_len * batch * k, e)}
        for strategy in (*strategies, "floor"):
            key = f"E{e}-top{k}/{strategy}"
            rec = _record(models[key], runs[key], seq_len, batch, peak)
            rec["ratio"] = None if rec["step_s"] is None else rec["step_s"] / t_dense
            countable = strategy != "blocksparse" and rec["xla_flops"] and f_dense
            rec["xla_flops_ratio"] = rec["xla_flops"] / f_dense if countable else None
            row[strategy] = rec
        out["shapes"][f"E{e}-top{k}"] = row
    return out


def _print(res: dict) -> None:
    print(
        f"{res['name']}: batch {res['batch']} x seq {res['seq_len']}; "
        f"XLA float32 matmul peak {res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s"
    )
    for key in ("model", "dense"):
        if key in res:
            m = res[key]
            print(f"  {key:5s} step {m['step_s'] * 1e3:8.1f} ms  {m['tokens_per_s']:9.0f} tokens/s  "
                  f"{m['flops_per_s'] / 1e9:6.1f} GFLOP/s  MFU {100 * m['mfu']:5.1f}%  "
                  f"active {m['active_params'] / 1e6:.2f}M  (compile {m['compile_s']:.1f} s)")  # fmt: skip
    if "moe_dense_ratio" in res:
        print(f"  MoE / dense step time: {res['moe_dense_ratio']:.3f}")


def _print_dispatch(res: dict) -> None:
    d = res["dense"]
    print(f"dispatch: batch {res['batch']} x seq {res['seq_len']}; XLA {res['dtype']} matmul peak "
          f"{res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; dense step {d['step_s'] * 1e3:.1f} ms, "
          f"MFU {100 * d['mfu']:.1f}%; capacity factor {res['capacity_factor']}")  # fmt: skip
    print("  shape          strategy      step ms   / dense   XLA FLOPs / dense")
    for name, row in res["shapes"].items():
        for strategy in (*DISPATCH_STRATEGIES, "floor"):
            if strategy not in row:
                continue
            r = row[strategy]
            flops = "?" if r["xla_flops_ratio"] is None else f"{r['xla_flops_ratio']:.2f}"
            if r["step_s"] is None:
                timing = f"{'not timed':>17s}"
            else:
                timing = f"{r['step_s'] * 1e3:9.1f} {r['ratio']:8.3f}"
            extra = f"  (blocks {row['block_sizes']})" if strategy == "blocksparse" else ""
            print(f"  {name:14s} {strategy:12s} {timing}   {flops:>8s}{extra}")


def _load(avg) -> str:
    return "/".join(f"{x:.1f}" for x in avg)
