"""``moelab train``: run one training (one trial of a sweep).

    moelab train --preset NAME | --config FILE [--tokens N | --flops C] --out DIR [--set train.lr=1e-3 ...]
                 [--mesh data=2,expert=4] [--remat none|minimal|full] [--distributed]

``--mesh`` runs the step on a device mesh (docs/parallel.md), ``--remat`` picks the rematerialisation policy;
both are execution options (not part of the config or the run id). ``--distributed`` joins a multi-host JAX
cluster first (``moelab.parallel.distributed.initialize_distributed``: TPU pods discover themselves, GPU
clusters read ``MOELAB_COORDINATOR`` / ``MOELAB_NUM_PROCESSES`` / ``MOELAB_PROCESS_ID`` or the flags below)
and, without ``--mesh``, uses a ``data`` axis over every device of the cluster.

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
    parser.add_argument(
        "--tracker",
        action="append",
        metavar="NAME",
        help="also log every metric live to tensorboard (RUN_DIR/tensorboard) or wandb (offline: "
        "RUN_DIR/wandb); "
        "repeatable; needs moelab[trackers]",
    )
    par = parser.add_argument_group("parallelism (execution options: they do not change the run id)")
    par.add_argument(
        "--mesh", help="device mesh, e.g. data=2,expert=4 (axes data, fsdp, expert, tensor; docs/parallel.md)"
    )
    par.add_argument(
        "--remat", default="none", help="rematerialisation policy: none (default), minimal or full"
    )
    par.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-host JAX cluster first (jax.distributed.initialize); default mesh: data=ALL",
    )
    par.add_argument("--coordinator", help="with --distributed: HOST:PORT of process 0")
    par.add_argument("--num-processes", type=int, help="with --distributed: process count")
    par.add_argument("--process-id", type=int, help="with --distributed: this process's id in [0, count)")


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


def _execution(args):
    """(mesh, remat) from the flags; with ``--distributed``, joins the cluster first (before any other use of
    JAX) and defaults the mesh to one ``data`` axis over every device of the cluster."""
    from moelab.errors import ConfigError
    from moelab.parallel.mesh import MeshShape
    from moelab.parallel.remat import POLICIES

    if args.remat not in POLICIES:
        raise ConfigError(f"--remat must be one of {'|'.join(POLICIES)}, got {args.remat!r}")
    mesh = MeshShape.parse(args.mesh) if args.mesh is not None else None  # one-line error before JAX starts
    cluster = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed:
        if any(v is not None for v in cluster):
            raise ConfigError("--coordinator, --num-processes and --process-id need --distributed")
        return mesh, args.remat
    from moelab.parallel.distributed import initialize_distributed

    initialize_distributed(*cluster)
    if mesh is None:
        import jax

        mesh = MeshShape(data=jax.device_count())
    return mesh, args.remat


def run(args) -> int:
    cfg = build_run(args)  # a bad config fails before the cluster is joined
    mesh, remat = _execution(args)
    from moelab.train.loop import run_training

    summary = run_training(
        cfg,
        args.out,
        progress=False if args.no_progress else None,
        mesh=mesh,
        remat=remat,
        tracker=args.tracker,
    )
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
    if _process_index() == 0:  # one summary line per run, not one per host
        print(json.dumps({k: summary.get(k) for k in keys}))
    return 0 if summary["status"] == "succeeded" else 1


def _process_index() -> int:
    import jax

    return jax.process_index()
