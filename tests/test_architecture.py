"""The architecture contract (``.importlinter``, DESIGN.md "The layers"): moelab and analysis are layered
bottom-up, the model imports no parallelism, moelab imports analysis only at the command line, the dispatch
strategies stand alone, and no two sibling modules import each other (function-local imports included). A
broken contract names the offending import chain."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def _lint(root: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-c", LINT, "--no-cache", "--config", str(root / ".importlinter")]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contract_holds():
    r = _lint(REPO)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]


def test_a_cycle_breaks_the_contract(tmp_path):
    """The same tree with one import added that closes a cycle (fitting -> fit -> fitting) fails."""
    for pkg in ("moelab", "analysis"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    fitting = tmp_path / "analysis" / "fitting.py"
    fitting.write_text(fitting.read_text() + "\n\ndef _cycle():\n    import analysis.fit  # noqa: F401\n")
    r = _lint(tmp_path)
    assert r.returncode != 0, r.stdout[-4000:]
    assert "BROKEN" in r.stdout and "analysis.fitting -> analysis.fit" in r.stdout, r.stdout[-4000:]


def test_importing_moelab_changes_no_environment_variable():
    """``import moelab`` (and its light packages, and analysis) has no side effect on the environment: the
    compilation cache is turned on where a run starts (``moelab.enable_compilation_cache``)."""
    code = (
        "import os; before = dict(os.environ); "
        "import moelab, moelab.config, moelab.train, moelab.sweep, analysis; "
        "print(sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "MOELAB_"))}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]
