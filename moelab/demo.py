"""``moelab demo``: train a slice of the lab's ladder afresh and show it beside the committed ladder.

Runs sweeps/demo.yaml (a few runs of the ladder's recipe) through the sweep package on an embedded local Ray
instance with the default corpus into results/, then writes the report (results/<sweep>/report/index.html)
of the committed ladder (data/ladder/ladder, the lab's reference runs) with a "Reproduction" section first:
each fresh run beside the committed run with the same run id, the difference, the seed noise measured on the
committed ladder and a verdict (analysis.report.reproduction). The fits use the committed runs; with no
committed runs yet they use the fresh ones and the section says there is nothing to compare. Prints the
report's path and a summary: the reproduction verdict in one line, the best law, its held-out error and the
extrapolated loss at hunyuan-large.

A second run finds every fresh run finished (the sweep skips them by run id and status) and only refreshes the
report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from moelab.errors import MoelabError

DEFAULT_SWEEP = "sweeps/demo.yaml"
DEFAULT_LADDER = "data/ladder/ladder"
REPO = Path(__file__).resolve().parents[1]  # the checkout this moelab was installed from (editable install)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="results root (default: results)")
    parser.add_argument("--sweep", default=DEFAULT_SWEEP, help=f"sweep file (default: {DEFAULT_SWEEP})")
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: an embedded local Ray)"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    parser.add_argument(
        "--ladder",
        default=None,
        help=f"the committed ladder (a results folder) to compare with (default: {DEFAULT_LADDER} in the "
        "moelab checkout; absent means nothing committed yet)",
    )
    from analysis.report.cli import add_fit_options

    add_fit_options(parser)


def _in_checkout(name: str, exists) -> Path | None:
    """``name`` as given, else relative to the checkout this moelab was installed from (``make demo`` runs in
    the checkout; an installed moelab run elsewhere still finds its own sweeps/ and data/)."""
    path = Path(name)
    if exists(path):
        return path
    if not path.is_absolute() and exists(REPO / path):
        return REPO / path
    return None


def find_sweep_file(name: str) -> Path:
    path = _in_checkout(name, Path.is_file)
    if path is None:
        raise MoelabError(
            f"--sweep {name}: no such sweep file (the demo's is {DEFAULT_SWEEP} in the moelab checkout)"
        )
    return path


def find_ladder(name: str | None) -> Path | None:
    """The committed ladder folder; None when the default one is absent (nothing committed yet). A folder the
    user named must exist."""
    path = _in_checkout(name or DEFAULT_LADDER, Path.is_dir)
    if path is None and name is not None:
        raise MoelabError(f"--ladder {name}: no such folder (the committed ladder is {DEFAULT_LADDER})")
    return path


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
    ladder = find_ladder(args.ladder)
    # the CLI boundary: analysis (pandas, SciPy, JAX fits) loads only when the demo runs
    from analysis.report.build import build_report
    from analysis.report.data import load_results
    from analysis.report.reproduction import compare, load_committed, report_data

    committed = None if ladder is None else load_committed(ladder)  # a broken ladder fails before training
    SweepSpec, run_sweep = _sweep_api()
    t0 = time.perf_counter()
    spec = SweepSpec.from_file(sweep_file)
    outcome = run_sweep(spec, args.results, address=args.address, num_cpus=args.num_cpus)
    sweep_s = time.perf_counter() - t0
    root = Path(outcome.get("table") or Path(args.results) / spec.name / "runs.parquet").parent

    rep = compare(load_results(root), committed, [t.run_id for t in spec.trials()], ladder or DEFAULT_LADDER)
    folder, summary = build_report(
        root,
        n_boot=args.bootstrap,
        max_starts=args.starts,
        laws=laws,
        data=report_data(rep),
        reproduction=rep,
    )
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
