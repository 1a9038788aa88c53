"""``moelab plan``: memory and time plan of a preset (or a config JSON) on a mesh of TPU/GPU chips.

Example::

    moelab plan --preset hunyuan-large --chips 128 --chip h100-80gb --seq 4096 --batch 1024

Without ``--chips``/``--chip`` it prints only the recommended peak learning rate, batch and expert learning
rate scale, from the laws ``analysis.hyper`` fits to an LR x batch sweep (``--hyper``; default: the rows of
``sweeps/hyper.yaml`` committed in ``data/hyper``); with them, the memory plan and then that recommendation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moelab.errors import ConfigError, MoelabError

GiB = 2**30


def register(parser: argparse.ArgumentParser) -> None:
    from moelab.parallel.chips import CHIPS
    from moelab.parallel.remat import POLICIES

    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a preset of moelab.presets, e.g. hunyuan-large")
    src.add_argument("--config", type=Path, help="a model config JSON (ModelConfig.to_dict(), or a run's "
                     "config.json with a 'model' key)")
    parser.add_argument("--chips", type=int, default=None, help="number of chips (with --chip: memory plan)")
    parser.add_argument("--chip", default=None, choices=sorted(CHIPS), help="accelerator kind")
    parser.add_argument("--seq", type=int, default=4096, help="sequence length (default 4096)")
    parser.add_argument("--batch", type=int, default=None,
                        help="global batch in sequences (default: a power-of-two multiple of --chips, "
                        ">= 4M tokens)")
    parser.add_argument("--mesh", default=None,
                        help="force a mesh, e.g. 'fsdp=8,expert=16' (default: searched)")
    parser.add_argument("--remat", default="full", choices=POLICIES, help="rematerialisation policy")
    parser.add_argument("--mfu", type=float, default=0.40,
                        help="assumed model FLOP utilisation (default 0.40)")
    parser.add_argument("--tokens", type=float, default=None,
                        help="training tokens (default: the preset's published count, e.g. hunyuan-large's)")
    parser.add_argument("--headroom", type=float, default=0.10,
                        help="fraction of HBM kept free (default 0.10)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--hyper", type=Path, default=None,
                        help="LR x batch sweep to fit the LR/batch laws on: a results folder or an export "
                        "(default: data/hyper, the committed rows of sweeps/hyper.yaml)")


def _load_config(args):
    from moelab.config import ModelConfig
    from moelab.presets import get_preset

    if args.preset:
        return get_preset(args.preset), args.preset
    try:
        data = json.loads(args.config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MoelabError(f"--config {args.config}: cannot read a JSON model config ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    return ModelConfig.from_dict(data), str(args.config)


def run(args) -> int:
    from moelab.parallel.chips import get_chip
    from moelab.parallel.mesh import MeshShape
    from moelab.parallel.planner import plan

    cfg, name = _load_config(args)
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"batch must be an integer >= 1, got {args.batch}")
    if (args.chips is None) != (args.chip is None):
        raise ConfigError("--chips and --chip go together (a memory plan needs both); give both or neither")
    out, text = {}, []
    if args.chips is not None:
        mesh = MeshShape.parse(args.mesh) if args.mesh else None
        p = plan(cfg, get_chip(args.chip), args.chips, seq=args.seq, batch=args.batch, mesh=mesh,
                 remat=args.remat, mfu=args.mfu, train_tokens=args.tokens, headroom=args.headroom,
                 preset=name)
        out, text = p.to_dict(), [format_plan(p)]
    try:
        from analysis.hyper import plan_hyper  # the analysis layer, loaded at the CLI boundary only

        rec, rec_text = plan_hyper(cfg, name, seq=args.seq, tokens=args.tokens, source=args.hyper)
        out["hyper"] = rec
        text.append(rec_text)
    except MoelabError as exc:
        if args.chips is None or args.hyper is not None:
            raise
        text.append(f"hyper-parameters: none ({exc})")
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print("\n".join(text))
    return 0


def _b(x: float) -> str:
    return f"{x / GiB:8.2f} GiB"


def format_plan(p) -> str:
    lines = [
        f"plan: {p.preset} on {p.chips} x {p.chip}  (seq {p.seq}, global batch {p.batch} sequences = "
        f"{p.tokens_per_step:,} tokens/step)",
        f"parameters: total {p.total_params_with_embedding / 1e9:.1f}B "
        f"({p.total_params / 1e9:.1f}B non-embedding), "
        f"activated {p.active_params_with_embedding / 1e9:.1f}B ({p.active_params / 1e9:.1f}B non-embedding)",
        f"mesh: {p.mesh}   micro-batch {p.micro_batch} sequence(s)/chip x {p.grad_accum} "
        "accumulation step(s)",
        f"memory per chip ({p.params_per_chip / 1e9:.3f}B parameters/chip):",
    ]
    for k, v in p.memory.items():
        lines.append(f"  {k:<36}{_b(v)}")
    lines.append(f"  {'total':<36}{_b(p.memory_total)}   of {_b(p.usable_bytes).strip()} usable "
                 f"({_b(p.hbm_bytes).strip()} HBM)")
    if p.fits:
        lines.append("FITS: the plan fits in memory.")
    else:
        more = (f"; the smallest power-of-two chip count that fits is {p.min_chips_to_fit}"
                if p.min_chips_to_fit else "")
        lines.append(f"DOES NOT FIT: needs {_b(p.memory_total).strip()} per chip, "
                     f"{_b(p.usable_bytes).strip()} usable{more}.")
    lines += [
        f"compute: {p.flops_per_token:.3e} FLOPs/token (moelab.accounting), "
        f"{p.flops_per_step:.3e} FLOPs/step",
        f"time at MFU {p.mfu:.0%}: {p.step_time_s:.2f} s/step, {p.tokens_per_day / 1e9:.2f}B tokens/day, "
        f"{p.days_to_train:,.1f} days for {p.train_tokens / 1e12:g}T tokens",
        f"KV cache (bf16): {p.kv_cache_bytes_per_token:,} bytes/token, "
        f"{p.kv_cache_bytes_per_256k_sequence / GiB:.2f} GiB per 256K-token sequence",
    ]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
