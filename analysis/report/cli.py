"""``moelab report RESULTS_DIR``: write RESULTS_DIR/report/ (index.html, report.md, figures/, fits.json).

``moelab report --csv FILE --col ...`` or ``--dataset NAME`` reports any table of runs (the options of
``moelab fit``); the report goes to ``--out``, by default results/NAME/report."""

from __future__ import annotations

import argparse
from pathlib import Path

from moelab.errors import MoelabError


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results_dir", metavar="RESULTS_DIR", nargs="?", help="a results folder holding runs.parquet"
    )
    parser.add_argument("--out", default=None, help="report folder (default: RESULTS_DIR/report)")
    parser.add_argument("--target", default="hunyuan-large", help="preset to extrapolate to")
    add_fit_options(parser)
    from analysis.cli import add_table_options  # the table options of moelab fit (a light module)

    add_table_options(parser)


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """--bootstrap, --starts, --laws: how the report fits (shared with ``moelab demo``)."""
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="N",
        help="bootstrap resamples per law for the report's intervals (default: 100)",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=None,
        metavar="S",
        help="cap on each law's grid of L-BFGS starts (default: the law's full grid)",
    )
    parser.add_argument(
        "--laws",
        default=None,
        metavar="A,B",
        help="comma-separated laws to fit (default: every registered law)",
    )


def _check_count(value: int | None, flag: str, minimum: int) -> None:
    if value is not None and value < minimum:
        raise MoelabError(f"{flag} {value}: must be an integer >= {minimum}")


def _laws(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    from analysis.laws import LAWS

    names = [x.strip() for x in spec.split(",") if x.strip()]
    for name in names:
        if name not in LAWS:
            raise MoelabError(f"--laws: unknown law {name!r}; choose from {', '.join(LAWS)}")
    return names


def run(args: argparse.Namespace) -> int:
    _check_count(args.bootstrap, "--bootstrap", 0)
    _check_count(args.starts, "--starts", 1)
    laws = _laws(args.laws)
    data = None
    if args.csv or args.dataset:
        from analysis.report.table import table_data

        root, data = table_data(args)
        args.out = args.out or root / "report"
    else:
        if args.results_dir is None:
            raise MoelabError("give a RESULTS_DIR, --csv FILE or --dataset NAME")
        root = Path(args.results_dir)
        if not root.is_dir():
            raise MoelabError(f"RESULTS_DIR {root}: no such folder")
    from analysis.report.build import build_report

    folder, summary = build_report(
        root,
        args.out,
        target=args.target,
        n_boot=args.bootstrap,
        max_starts=args.starts,
        laws=laws,
        data=data,
    )
    print(f"report: {folder / 'index.html'}")
    for line in summary:
        print(f"  {line}")
    return 0
