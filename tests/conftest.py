"""Shared test setup, and the skip policy.

Eight simulated CPU devices so the sharding tests can build meshes; it must be set before JAX is imported.
JAX's persistent compilation cache (turned on below; importing moelab does not) keeps repeated runs fast.

Skips are decisions, not accidents: every run ends with a ``moelab skips:`` line counting them, and under
CI (``CI=true``) a skip whose test is not in :data:`ALLOWED_SKIPS` (a short list, each with its reason) fails
the run. A machine that lacks what a test needs (Chromium) must install it or fail.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

import moelab  # noqa: E402

moelab.enable_compilation_cache()  # importing moelab has no side effect: the suite turns the cache on

REPO = Path(__file__).resolve().parents[1]

#: Tests that may skip under CI: node id prefix -> why the skip is acceptable there. Keep it short.
ALLOWED_SKIPS: dict[str, str] = {}

_SKIPS: list[tuple[str, str, bool]] = []  # (node id, reason, allowed)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def allowed_skip(nodeid: str) -> bool:
    return any(nodeid.startswith(prefix) for prefix in ALLOWED_SKIPS)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPS.append((report.nodeid, reason.removeprefix("Skipped: "), allowed_skip(report.nodeid)))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    bad = [s for s in _SKIPS if not s[2]]
    line = f"moelab skips: {len(_SKIPS)} ({len(_SKIPS) - len(bad)} allowed)"
    terminalreporter.write_line(line)
    if bad and in_ci():
        terminalreporter.write_line(
            f"CI=true: {len(bad)} skip(s) not in tests/conftest.py ALLOWED_SKIPS fail the run "
            "(install what they need, or allow them there with the reason):",
            red=True,
        )
        for nodeid, reason, _ in bad:
            terminalreporter.write_line(f"  {nodeid}: {reason}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if in_ci() and any(not allowed for *_, allowed in _SKIPS) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
