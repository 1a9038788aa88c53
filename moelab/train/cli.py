"""``moelab train``: run one training (one trial of a sweep).

    moelab train --preset NAME | --config FILE [--tokens N | --flops C] --out DIR [--set train.lr=1e-3 ...]

Exit status: 0 when the run succeeded, 1 when it diverged (summary.json says at which step), 2 for bad input
(one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a model preset name (moelab.presets), with default data and training")
    src.add_argument(
        "--config", help="a JSON or YAML RunConfig file: {model: {...} | PRESET, data: {...}, train: {...}}"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=float, help="training tokens (overrides train.tokens / train.flops)")
    budget.add_argument(
        "--flops", type=float, help="training FLOPs (moelab.accounting.train_flops_per_token)"
    )
    parser.add_argument(
        "--out", required=True, help="run folder; a restarted run resumes from its checkpoints"
    )
    parser.add_argument(
        "--corpus", help="data.corpus: default, a text file/folder, .jsonl, .parquet or hf:NAME"
    )
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set train.lr=1e-3 --set model.top_k=2 (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even in a terminal")


def build_run(args):
    from moelab.errors import ConfigError
    from moelab.train.config import RunConfig, load_run_config, yaml_load

    if args.config:
        run = load_run_config(args.config)
    else:
        run = RunConfig.from_dict({"model": args.preset})
    d = run.to_dict()
    for item in args.set:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not (sep and dot and section in d):
            raise ConfigError(
                f"--set {item!r}: expected SECTION.FIELD=VALUE with SECTION one of model, data, train"
            )
        if field not in d[section]:
            raise ConfigError(
                f"--set {item!r}: {section} has no field {field!r}; allowed: {', '.join(d[section])}"
            )
        d[section][field] = yaml_load(value)
    if args.corpus:
        d["data"]["corpus"] = args.corpus
    if args.seed is not None:
        d["train"]["seed"] = args.seed
    if args.tokens is not None:
        if args.tokens < 1 or args.tokens != int(args.tokens):
            raise ConfigError(f"--tokens must be a whole number >= 1, got {args.tokens:g}")
        d["train"]["tokens"], d["train"]["flops"] = int(args.tokens), None
    if args.flops is not None:
        d["train"]["tokens"], d["train"]["flops"] = None, float(args.flops)
    return RunConfig.from_dict(d)


def run(args) -> int:
    from moelab.train.loop import run_training

    cfg = build_run(args)
    summary = run_training(cfg, args.out, progress=False if args.no_progress else None)
    keys = (
        "status",
        "steps",
        "tokens",
        "eval_loss",
        "eval_bpb",
        "unigram_entropy",
        "wall_time_s",
        "tokens_per_s",
        "mfu",
        "diverged_step",
    )
    print(json.dumps({k: summary.get(k) for k in keys}))
    return 0 if summary["status"] == "succeeded" else 1
