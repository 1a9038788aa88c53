"""``moelab sweep plan FILE`` | ``moelab sweep run FILE`` | ``moelab sweep status NAME``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moelab.errors import MoelabError


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sweep_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True
    plan = sub.add_parser("plan", help="print every run of a sweep file and what `run` would do (dry run)")
    plan.add_argument("file", help="sweep spec, e.g. sweeps/demo.yaml")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON lines instead of a table")
    run = sub.add_parser("run", help="train the runs of a sweep file that are not finished, through Ray")
    run.add_argument("file", help="sweep spec, e.g. sweeps/demo.yaml")
    run.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local instance)",
    )
    run.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="trials at once (default: the spec's, else as many as the resources hold)",
    )
    run.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the embedded Ray instance (default: all)"
    )
    run.add_argument("--no-live", action="store_true", help="plain log lines instead of the live panel")
    status = sub.add_parser("status", help="state of every run of a sweep (by name, folder or spec file)")
    status.add_argument("name", help="sweep name (results/NAME), its folder, or its spec file")
    status.add_argument(
        "--rebuild",
        action="store_true",
        help="rewrite runs.parquet from the run folders (after it was lost or damaged); trains nothing",
    )
    for p in (plan, run, status):
        p.add_argument("--results", default="results", help="results root (default: results)")
    for p in (plan, run):
        p.add_argument(
            "--rerun-failed", action="store_true", help="rerun failed and diverged runs from scratch"
        )


def run(args: argparse.Namespace) -> int:
    return {"plan": _plan, "run": _run, "status": _status}[args.sweep_command](args)


def _plan(args) -> int:
    from moelab.sweep.plan import check_plan, make_plan, plan_rows, render_plan
    from moelab.sweep.spec import SweepSpec

    spec = SweepSpec.from_file(args.file)
    planned, rate, src = make_plan(spec, args.results, args.rerun_failed)
    checks = check_plan(spec, planned)  # tokens per parameter and epochs of the corpus, flagged
    if args.json:
        for row, c in zip(plan_rows(planned), checks[0], strict=True):
            checked = {"tokens_per_param": c.tokens_per_param, "epochs": c.epochs, "flags": c.flags}
            print(json.dumps(row | checked))
        return 0
    render_plan(spec, planned, rate, src, spec.max_concurrency or 1, checks=checks)
    return 0


def _run(args) -> int:
    from moelab.sweep.scheduler import run_sweep
    from moelab.sweep.spec import SweepSpec

    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise MoelabError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    spec = SweepSpec.from_file(args.file)
    outcome = run_sweep(
        spec,
        args.results,
        address=args.address,
        rerun_failed=args.rerun_failed,
        max_concurrency=args.max_concurrency,
        num_cpus=args.num_cpus,
        live=False if args.no_live else None,
    )
    return 1 if outcome["failed"] or outcome["diverged"] else 0


def _status(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from moelab.sweep.plan import human, make_plan
    from moelab.sweep.spec import SweepSpec
    from moelab.sweep.state import read_summary, run_state

    name = args.name
    spec_file = Path(name) if name.endswith((".yaml", ".yml")) else Path("sweeps") / f"{name}.yaml"
    folder = (
        Path(name) if Path(name).is_dir() and (Path(name) / "runs").is_dir() else Path(args.results) / name
    )
    rows = []
    if spec_file.is_file():
        spec = SweepSpec.from_file(spec_file)
        folder = Path(args.results) / spec.name
        planned, _, _ = make_plan(spec, args.results)
        for p in planned:
            rows.append(
                (
                    p.run_id,
                    p.state,
                    p.trial.run.model,
                    p.active_params,
                    p.tokens,
                    read_summary(p.run_dir) or {},
                )
            )
    elif (folder / "runs").is_dir():
        from moelab.config import ModelConfig
        from moelab.sweep.runid import is_run_id
        from moelab.sweep.state import read_json
        from moelab.train.identity import upgrade

        for d in sorted((folder / "runs").iterdir()):
            cfg = read_json(d / "config.json")
            if not is_run_id(d.name) or cfg is None:
                continue
            model = ModelConfig.from_dict(upgrade(cfg)["model"])
            from moelab.accounting import param_counts

            rows.append(
                (
                    d.name,
                    run_state(d),
                    model,
                    param_counts(model).active,
                    (cfg.get("train") or {}).get("tokens") or 0,
                    read_summary(d) or {},
                )
            )
    else:
        raise MoelabError(f"sweep {name!r}: no results folder {folder} and no spec file {spec_file}")
    if args.rebuild:
        from moelab.sweep.store import write_table

        table = write_table(folder)
        print(f"rebuilt {table} from {len(rows)} run folder(s)", file=sys.stderr)
    table = Table(title=f"sweep {folder.name} ({folder})", title_justify="left")
    for col in ("run_id", "state", "experts", "top_k", "active", "tokens", "loss", "wall"):
        table.add_column(col, justify="left" if col in ("run_id", "state") else "right")
    colour = {
        "succeeded": "green",
        "failed": "red",
        "diverged": "red",
        "interrupted": "yellow",
        "started": "yellow",
        "new": "cyan",
    }
    counts: dict[str, int] = {}
    for rid, state, model, active, tokens, summary in rows:
        counts[state] = counts.get(state, 0) + 1
        loss = summary.get("eval_loss")
        wall = summary.get("wall_time_s")
        table.add_row(
            rid,
            f"[{colour.get(state, 'white')}]{state}[/]",
            str(model.n_experts),
            str(model.top_k),
            human(active),
            human(tokens),
            f"{loss:.4f}" if isinstance(loss, int | float) else "-",
            f"{wall:.0f}s" if isinstance(wall, int | float) else "-",
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no runs")
    failed = [r for r in rows if r[1] in ("failed", "diverged")]
    for rid, state, *_rest, summary in failed:
        print(f"{rid} {state}: {summary.get('error') or summary.get('diverged_step') or ''}", file=sys.stderr)
    return 0
