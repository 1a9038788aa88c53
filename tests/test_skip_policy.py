"""The skip policy of tests/conftest.py on a real pytest run: a skip is counted, and under CI=true a skip that
is not in ALLOWED_SKIPS fails the run (exit code 1) and names the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pytest(folder: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO)}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_unlisted_skip_fails_under_ci_and_is_counted_outside(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_some.py").write_text(
        "import pytest\n"
        "def test_runs():\n    pass\n"
        "def test_needs_a_tool():\n    pytest.skip('no such tool here')\n"
    )
    local = _pytest(tmp_path, ci=False)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "moelab skips: 1 (0 allowed)" in local.stdout
    ci = _pytest(tmp_path, ci=True)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "test_some.py::test_needs_a_tool: no such tool here" in ci.stdout
    # without the skip, CI passes
    (tests / "test_some.py").write_text("def test_runs():\n    pass\n")
    clean = _pytest(tmp_path, ci=True)
    assert clean.returncode == 0 and "moelab skips: 0 (0 allowed)" in clean.stdout, clean.stdout
