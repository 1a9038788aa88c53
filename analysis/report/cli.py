"""``moelab report RESULTS_DIR``: write RESULTS_DIR/report/ (index.html, report.md, figures/, fits.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from moelab.errors import MoelabError


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a results folder holding runs.parquet")
    parser.add_argument("--out", default=None, help="report folder (default: RESULTS_DIR/report)")
    parser.add_argument(
        "--target", default="hunyuan-large", help="preset to extrapolate to (default: hunyuan-large)"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="N",
        help="bootstrap resamples for the intervals (default: the analysis package's)",
    )


def run(args: argparse.Namespace) -> int:
    root = Path(args.results_dir)
    if not root.is_dir():
        raise MoelabError(f"RESULTS_DIR {root}: no such folder")
    if args.bootstrap is not None and args.bootstrap < 0:
        raise MoelabError(f"--bootstrap {args.bootstrap}: must be >= 0")
    from analysis.report.build import build_report

    folder, summary = build_report(root, args.out, target=args.target, n_boot=args.bootstrap)
    print(f"report: {folder / 'index.html'}")
    for line in summary:
        print(f"  {line}")
    return 0
