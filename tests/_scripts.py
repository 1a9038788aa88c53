"""Load a file of ``scripts/`` (not a package) as a module, for the tests of the lab's scripts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def script_module(name: str) -> ModuleType:
    """``scripts/NAME.py`` imported as module ``NAME`` (a fresh module each call)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
