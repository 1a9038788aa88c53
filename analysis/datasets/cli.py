"""``moelab datasets``: the public scaling data bundled with moelab.

moelab datasets [list]        name, runs in the paper's selection, title
moelab datasets info NAME     source, license, citation, column map, selection, the paper's law
"""

from __future__ import annotations

import argparse

from analysis import datasets


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="the bundled datasets")
    info = sub.add_parser("info", help="source, license, citation and column map of one dataset")
    info.add_argument("name", metavar="NAME", help=", ".join(datasets.names()))


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "info":
        print(datasets.info_text(args.name))
        return 0
    for name in datasets.names():
        d = datasets.get(name)
        print(f"{name:<18} {d.spdx:<10} {d.title}")
    print("moelab datasets info NAME: source, license, citation; moelab fit --dataset NAME --law LAW: a fit")
    return 0
