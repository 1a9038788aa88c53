"""``moelab demo``: the main job on the embedded default.

Runs sweeps/demo.yaml through the sweep package on an embedded local Ray instance with the default corpus,
fits the scaling laws, writes the report (results/demo/report/index.html) and prints its path with a
three-line summary: the best law, its held-out error and the extrapolated loss at hunyuan-large.

A second run finds every run finished (the sweep skips them by run id and status) and only refreshes the
report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from moelab.errors import MoelabError

DEFAULT_SWEEP = "sweeps/demo.yaml"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="results root (default: results)")
    parser.add_argument("--sweep", default=DEFAULT_SWEEP, help=f"sweep file (default: {DEFAULT_SWEEP})")
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: an embedded local Ray)"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    from analysis.report.cli import add_fit_options

    add_fit_options(parser)


def find_sweep_file(name: str) -> Path:
    """``name`` as given, else relative to the checkout this moelab was installed from (``make demo`` runs in
    the checkout; an installed moelab run elsewhere still finds its own sweeps/)."""
    path = Path(name)
    if path.is_file():
        return path
    if not path.is_absolute():
        repo = Path(__file__).resolve().parents[1]
        if (repo / path).is_file():
            return repo / path
    raise MoelabError(
        f"--sweep {name}: no such sweep file (the demo's is {DEFAULT_SWEEP} in the moelab checkout)"
    )


def _sweep_api():
    try:
        from moelab.sweep.scheduler import run_sweep
        from moelab.sweep.spec import SweepSpec
    except ImportError as exc:
        raise MoelabError(f"the sweep package is not available in this installation ({exc})") from exc
    return SweepSpec, run_sweep


def run(args: argparse.Namespace) -> int:
    from analysis.report.cli import _check_count, _laws

    _check_count(args.bootstrap, "--bootstrap", 0)
    _check_count(args.starts, "--starts", 1)
    laws = _laws(args.laws)
    sweep_file = find_sweep_file(args.sweep)
    SweepSpec, run_sweep = _sweep_api()
    t0 = time.perf_counter()
    spec = SweepSpec.from_file(sweep_file)
    outcome = run_sweep(spec, args.results, address=args.address, num_cpus=args.num_cpus)
    sweep_s = time.perf_counter() - t0
    root = Path(outcome.get("table") or Path(args.results) / spec.name / "runs.parquet").parent

    from analysis.report.build import build_report

    folder, summary = build_report(root, n_boot=args.bootstrap, max_starts=args.starts, laws=laws)
    report_s = time.perf_counter() - t0 - sweep_s
    trained = outcome.get("trained", 0)
    print(
        f"sweep {spec.name}: {outcome.get('runs', '?')} runs, {trained} trained now, "
        f"{outcome.get('skipped', 0)} reused ({sweep_s:.0f} s); report in {report_s:.0f} s"
    )
    print(f"report: {(folder / 'index.html').resolve()}")
    for line in summary:
        print(f"  {line}")
    failed = outcome.get("failed", 0)
    if failed:
        print(f"  note: {failed} runs failed; see the report's sweep table")
    return 0
