"""Read sweep results into pandas: ``moelab.results.load(path_or_paths)``.

A path may be a ``runs.parquet`` file, a sweep folder (``results/NAME``), or a results root holding several
sweep folders (``results/``). A sweep folder whose table is missing (a driver killed before its first
write) is read from its run folders instead. Columns: docs/architecture.md, "runs.parquet".
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from moelab.errors import MoelabError

__all__ = ["load", "sweep_dirs"]


def sweep_dirs(path: str | os.PathLike) -> list[Path]:
    """The sweep folders a path names (itself when it is one, else its children that are)."""
    path = Path(path)
    if _is_sweep(path):
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_dir() and _is_sweep(p))
    return []


def load(path_or_paths: str | os.PathLike | Iterable[str | os.PathLike]):
    """One DataFrame with a row per run of every sweep named (``sweep`` column tells them apart)."""
    import pandas as pd

    from moelab.sweep.store import COLUMNS, collect_rows, to_frame

    paths = [path_or_paths] if isinstance(path_or_paths, str | os.PathLike) else list(path_or_paths)
    frames = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            if p.suffix != ".parquet":
                raise MoelabError(f"results path {p} is not a runs.parquet file or a results folder")
            frames.append(pd.read_parquet(p))
            continue
        dirs = sweep_dirs(p)
        if not dirs:
            raise MoelabError(f"results path {p} holds no sweep (no runs.parquet and no runs/ folder)")
        for d in dirs:
            table = d / "runs.parquet"
            frames.append(pd.read_parquet(table) if table.is_file() else to_frame(collect_rows(d)))
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return to_frame([])
    frame = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
    ordered = [c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]
    return frame[ordered].reset_index(drop=True)


def _is_sweep(path: Path) -> bool:
    return (path / "runs.parquet").is_file() or (path / "runs").is_dir()
