"""Run ids and run folders: ``<slug>-<hash>``, e.g. ``E8k1-N3e5-D1e7-s0-1a2b3c4d5e6f``.

As in Marin's executor, an output path carries a hash of what determines the result, so the same configuration
always lands in the same folder and a changed one never overwrites another's. The hash is over the canonical
form of ``moelab.train.identity`` (semantic fields that differ from their baseline), so adding a field with a
neutral baseline keeps every id. The readable slug in front (experts, top-k, shared experts, activated
parameters, tokens, seed) is a function of the same config; only the hash identifies the run.

Folders written by the first schema (commit 11da807) are named by a bare 12-hex hash of all semantic fields;
``adopt`` renames such a folder (or one whose slug format has since changed) to its run's current name, so a
finished run is found, skipped and reported, never retrained.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from moelab.accounting import param_counts
from moelab.train.identity import RUN_ID_LEN, canonical_json, legacy_run_id, run_hash

__all__ = ["RUN_ID_LEN", "adopt", "canonical_json", "hash_of", "is_run_id", "run_id", "slug"]

_NAME = re.compile(rf"^(?:[A-Za-z0-9.+]+-)*([0-9a-f]{{{RUN_ID_LEN}}})$")


def run_id(run: Any) -> str:
    """The run's folder name: ``slug(run)-hash`` for a RunConfig."""
    return f"{slug(run)}-{run_hash(run.to_dict())}"


def slug(run: Any) -> str:
    """``E{experts}k{top_k}[sh{shared}]-N{active}-D{tokens}-lr{lr}-s{seed}``: what a person reads."""
    m = run.model
    shared = f"sh{m.n_shared_experts}" if m.n_shared_experts else ""
    return (
        f"E{m.n_experts}k{m.top_k}{shared}-N{_short(param_counts(m).active)}-D{_short(run.budget_tokens())}"
        f"-lr{_short(run.train.lr)}-s{run.train.seed}"
    )


def hash_of(name: str) -> str | None:
    """The content hash of a run folder name (new or first-schema form), or None for any other name."""
    match = _NAME.match(name)
    return match.group(1) if match else None


def is_run_id(name: str) -> bool:
    return hash_of(name) is not None


def adopt(runs_dir: Path, runs: list[Any]) -> int:
    """Give each run's folder its current name; returns how many moved.

    A folder is the run's when it carries the run's hash under another slug (the slug's format changed) or is
    named by the run's first-schema id (commit 11da807: a bare hash of every field). The rename is atomic
    (``os.replace`` within one folder); a folder already under the current name wins and the other is left
    alone for the user to inspect.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return 0
    by_hash = {hash_of(p.name): p for p in runs_dir.iterdir() if p.is_dir() and is_run_id(p.name)}
    moved = 0
    for run in runs:
        name = run_id(run)
        dst = runs_dir / name
        src = by_hash.get(hash_of(name)) or by_hash.get(legacy_run_id(run.to_dict()))
        if src is not None and src != dst and not dst.exists():
            os.replace(src, dst)
            moved += 1
    return moved


def _short(x: float) -> str:
    """3e5, 3.2e5, 1e7: two significant digits, no '+' or leading zeros in the exponent."""
    mant, exp = f"{float(x):.1e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"
