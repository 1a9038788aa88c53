"""Run identity: a short content hash of the semantic configuration.

As in Marin's executor, an output path carries a hash of what determines the result, so the same configuration
always lands in the same folder and a changed one never overwrites another's. ``RunConfig.semantic_dict()``
leaves out output paths and cosmetic fields (logging intervals and the like); the hash is over its canonical
JSON (sorted keys, no spaces), so dict order and formatting never change an id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

RUN_ID_LEN = 12


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, compact separators, floats in Python's shortest round-trip form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_default)


def run_id(run: Any) -> str:
    """``sha256(canonical_json(run.semantic_dict()))[:12]`` (of a RunConfig, or of a semantic dict)."""
    semantic = run if isinstance(run, dict) else run.semantic_dict()
    return hashlib.sha256(canonical_json(semantic).encode()).hexdigest()[:RUN_ID_LEN]


def is_run_id(name: str) -> bool:
    return len(name) == RUN_ID_LEN and all(c in "0123456789abcdef" for c in name)


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON-serialisable in a run config: {type(obj).__name__}")
