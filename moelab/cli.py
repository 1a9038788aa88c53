"""The ``moelab`` command.

Each subcommand lives in its own module that exposes ``register(parser)`` (adds its arguments) and
``run(args) -> int``. Only the module of the subcommand being run is imported, so ``moelab --help`` stays fast
and does not import JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from moelab import __version__, enable_compilation_cache
from moelab.errors import MoelabError, disk_full_message

# name -> (module, one-line help). The module is imported only when its command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("moelab.train.cli", "train one model (one trial of a sweep)"),
    "sweep": ("moelab.sweep.cli", "plan, run and inspect Ray-scheduled sweep grids"),
    "fit": ("analysis.cli", "fit scaling laws to a results folder, a bundled dataset or a CSV"),
    "suggest": ("analysis.suggest_cli", "the next runs that most shrink a prediction's interval per FLOP"),
    "report": ("analysis.report.cli", "write the scaling-law report of a results folder"),
    "datasets": ("analysis.datasets.cli", "public scaling data bundled with moelab: list, info NAME"),
    "plan": ("moelab.parallel.cli", "memory and time plan of a large configuration on a TPU/GPU mesh"),
    "bench": ("moelab.bench", "benchmarks: training-step throughput and model FLOP utilisation"),
    "demo": ("moelab.demo", "train the demo sweep afresh and report it beside the committed ladder"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``moelab: error: ...`` and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]} (see '{self.prog} --help')\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moelab",
        description="moelab: scaling laws of Mixture-of-Experts language models (JAX, Flax NNX, Ray).",
    )
    parser.add_argument("--version", action="version", version=f"moelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _load(module).register(p)
    return parser


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise MoelabError(f"command module {module} is not available in this installation") from exc
        raise


def _command_of(argv: list[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    enable_compilation_cache()  # every command's JAX programs (train, fit, bench) reuse earlier compilations
    try:
        command = _command_of(argv)
        parser = build_parser(command)
        args = parser.parse_args(argv)
        return int(_load(COMMANDS[args.command][0]).run(args) or 0)
    except MoelabError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"moelab: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("moelab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk is the machine's state, not a bug: one line, not a traceback
        line = disk_full_message(exc)
        if line is None:
            raise
        print(f"moelab: error: {line}; free space and run the same command again to resume", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
