"""The documented schemas are the code's: docs/architecture.md lists the runs.parquet columns group by group
(``moelab.sweep.store``) and the keys of every metrics.jsonl row (``moelab.train.metrics.METRIC_KEYS``), in
the code's order. docs/sweeps.md describes the table in words and points here for the list."""

from __future__ import annotations

import re
from pathlib import Path

from moelab.sweep import store
from moelab.train.metrics import METRIC_KEYS

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start : end if end > 0 else len(text)]


def _names(text: str) -> list[str]:
    return re.findall(r"`([a-z0-9_]+)`", text)


def test_the_documented_runs_parquet_columns_are_the_stores():
    section = _section("runs.parquet")
    groups = {
        "Identity": store.IDENTITY, "Model": store.MODEL, "Accounting": store.ACCOUNTING,
        "Training": store.TRAINING, "Outcome": store.OUTCOME, "Provenance": store.PROVENANCE,
    }  # fmt: skip
    for label, columns in groups.items():
        m = re.search(rf"^{label}\b[^:\n]*:(.*?)(?=^[A-Z][a-z ]+(?:\([^)]*\))?:|\Z)", section, re.M | re.S)
        assert m, f"docs/architecture.md: no '{label}:' line in the runs.parquet section"
        assert _names(m.group(1)) == list(columns), label
    assert sum(groups.values(), ()) == store.COLUMNS  # no column outside the documented groups


def test_the_documented_metrics_keys_are_the_loops():
    bullets = _section("A run folder").split("\n- ")
    bullet = next(b for b in bullets if b.startswith("`metrics.jsonl`"))
    first = bullet.split(";")[0]  # "one JSON object per logged step with keys ..."
    assert _names(first) == list(METRIC_KEYS)
