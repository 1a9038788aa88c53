"""Files written whole or not at all: every JSON and text file moelab writes goes through here.

``write_text_atomic`` writes a temporary file in the destination's folder, flushes it to the disk
(``fsync``) and renames it over the destination (``os.replace``, atomic on POSIX), so a reader sees the old
file or the new one, never a torn one, even after a crash or power loss; on any error the temporary file is
removed and an ``OSError`` that names no file (a full disk) is given the destination's name, so the one-line
error says which file (``moelab.errors.disk_full_message``). ``write_json_atomic`` writes ``json_safe(data)``
(NaN and infinities become null, NumPy scalars Python numbers) with one space of indent, keys in insertion
order.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def json_safe(x: Any) -> Any:
    """JSON-safe: NaN/Inf become None, NumPy scalars become Python numbers (recursively)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def name_file(exc: BaseException, path) -> None:
    """Name the file in an OSError raised by a write (a full disk gives none), for a one-line report."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (see the module doc); creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        name_file(exc, path)
        raise


def write_json_atomic(path, data: Any) -> None:
    """``data`` as JSON at ``path``, atomically (``json_safe``; what JSON cannot hold is written as str)."""
    write_text_atomic(path, json.dumps(json_safe(data), indent=1, default=str) + "\n")
