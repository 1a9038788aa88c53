"""``moelab demo``: the main job on the embedded default.

Runs sweeps/demo.yaml on an embedded local Ray instance with the default corpus, fits the scaling laws and
writes the report. (Filled in as the sweep, analysis and report pieces land; see the README.)
"""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="results root (default: results)")


def run(args: argparse.Namespace) -> int:
    from moelab import __version__

    print(f"moelab {__version__}: the demo pipeline is not assembled yet; nothing was run.")
    return 0
