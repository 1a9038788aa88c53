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

    from moelab.sweep.store import COLUMNS, to_frame

    paths = [path_or_paths] if isinstance(path_or_paths, str | os.PathLike) else list(path_or_paths)
    frames = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            if p.suffix != ".parquet":
                raise MoelabError(f"results path {p} is not a runs.parquet file or a results folder")
            if p.name == "runs.parquet" and (p.parent / "runs").is_dir():
                frames.append(_table_or_folders(p.parent))
                continue
            try:
                frames.append(pd.read_parquet(p))
            except Exception as exc:  # noqa: BLE001 - the user's file, not our bug
                why = type(exc).__name__
                raise MoelabError(f"results path {p}: cannot read it as parquet ({why})") from None
            continue
        dirs = sweep_dirs(p)
        if not dirs:
            raise MoelabError(f"results path {p} holds no sweep (no runs.parquet and no runs/ folder)")
        for d in dirs:
            frames.append(_table_or_folders(d))
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return to_frame([])
    frame = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
    ordered = [c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]
    return frame[ordered].reset_index(drop=True)


def _table_or_folders(sweep: Path):
    """A sweep folder's runs.parquet, or its rows read from the run folders (the source of truth) when the
    table is missing or unreadable (a warning says how to rewrite it)."""
    import warnings

    import pandas as pd

    from moelab.sweep.store import collect_rows, to_frame

    table = sweep / "runs.parquet"
    if table.is_file():
        try:
            return pd.read_parquet(table)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: fall back to the folders
            warnings.warn(
                f"{table} is unreadable ({type(exc).__name__}); read the run folders instead "
                f"(rewrite it with `moelab sweep status {sweep} --rebuild`)",
                UserWarning,
                stacklevel=3,
            )
    return to_frame(collect_rows(sweep))


def _is_sweep(path: Path) -> bool:
    return (path / "runs.parquet").is_file() or (path / "runs").is_dir()
