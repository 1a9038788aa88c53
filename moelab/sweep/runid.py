"""Run ids and run folders: ``<slug>-<hash>``, e.g. ``E8k1-N3e5-D1e7-s0-1a2b3c4d5e6f``.

As in Marin's executor, an output path carries a hash of what determines the result, so the same configuration
always lands in the same folder and a changed one never overwrites another's. The hash is over the canonical
form of ``moelab.train.identity`` (semantic fields that differ from their baseline), so adding a field with a
neutral baseline keeps every id. The readable slug in front (experts, top-k, shared experts, activated
parameters, tokens, seed) is a function of the same config; only the hash identifies the run.

Folders written by the first schema (commit 11da807) are named by a bare 12-hex hash of all semantic fields;
``adopt_legacy`` renames such a folder to its run's current name, so a finished run is found, skipped and
reported, never retrained.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from moelab.accounting import param_counts
from moelab.train.identity import RUN_ID_LEN, canonical_json, legacy_run_id, run_hash

__all__ = ["RUN_ID_LEN", "adopt_legacy", "canonical_json", "hash_of", "is_run_id", "run_id", "slug"]

_NAME = re.compile(rf"^(?:[A-Za-z0-9.+]+-)*([0-9a-f]{{{RUN_ID_LEN}}})$")


def run_id(run: Any) -> str:
    """The run's folder name: ``slug(run)-hash`` for a RunConfig."""
    return f"{slug(run)}-{run_hash(run.to_dict())}"


def slug(run: Any) -> str:
    """``E{experts}k{top_k}[s{shared}]-N{active}-D{tokens}-s{seed}``: what a person reads in a listing."""
    m = run.model
    shared = f"s{m.n_shared_experts}" if m.n_shared_experts else ""
    return (
        f"E{m.n_experts}k{m.top_k}{shared}-N{_short(param_counts(m).active)}-D{_short(run.budget_tokens())}"
        f"-s{run.train.seed}"
    )


def hash_of(name: str) -> str | None:
    """The content hash of a run folder name (new or first-schema form), or None for any other name."""
    match = _NAME.match(name)
    return match.group(1) if match else None


def is_run_id(name: str) -> bool:
    return hash_of(name) is not None


def adopt_legacy(runs_dir: Path, run: Any) -> bool:
    """Rename a first-schema folder of ``run`` (named by its old id) to ``run_id(run)``; True if one moved.

    The rename is atomic (``os.replace`` within one folder); a folder already under the new name wins and the
    old one is left alone for the user to inspect.
    """
    old = legacy_run_id(run.to_dict())
    if old is None:
        return False
    src, dst = Path(runs_dir) / old, Path(runs_dir) / run_id(run)
    if not src.is_dir() or dst.exists():
        return False
    os.replace(src, dst)
    return True


def _short(x: float) -> str:
    """3e5, 3.2e5, 1e7: two significant digits, no '+' or leading zeros in the exponent."""
    mant, exp = f"{float(x):.1e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"
