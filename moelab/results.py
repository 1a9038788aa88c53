"""Read sweep results into pandas: ``moelab.results.load(path_or_paths)``.

A path may be a ``runs.parquet`` file, a sweep folder (``results/NAME``), or a results root holding several
sweep folders (``results/``). A sweep folder whose table is missing (a driver killed before its first
write) is read from its run folders instead. Columns: docs/architecture.md, "runs.parquet".
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from moelab.errors import MoelabError
from moelab.sweep.store import COLUMNS, PARQUET, collect_rows, to_frame

__all__ = ["load", "sweep_dirs", "tables"]


def sweep_dirs(path: str | os.PathLike) -> list[Path]:
    """The sweep folders a path names (itself when it is one, else its children that are)."""
    path = Path(path)
    if _is_sweep(path):
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_dir() and _is_sweep(p))
    return []


def tables(path: str | os.PathLike) -> list[tuple[Path, pd.DataFrame]]:
    """(source, frame) of each sweep table ``path`` names: a ``runs.parquet`` file, a sweep folder or a
    results root holding several. Every frame has a ``sweep`` column (the folder's name where it has none).
    The one reader of runs tables: ``load`` and ``analysis.load.load_runs`` both go through it."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".parquet":
            raise MoelabError(f"results path {p} is not a runs.parquet file or a results folder")
        if p.name == PARQUET and (p.parent / "runs").is_dir():
            return [(p, _with_sweep(_table_or_folders(p.parent), p.parent.name))]
        try:
            frame = pd.read_parquet(p)
        except Exception as exc:  # noqa: BLE001 - the user's file, not our bug
            why = type(exc).__name__
            raise MoelabError(f"results path {p}: cannot read it as parquet ({why})") from None
        return [(p, _with_sweep(frame, p.parent.name))]
    if not p.exists():
        raise MoelabError(f"results path {p} holds no sweep (no such file or folder)")
    dirs = sweep_dirs(p)
    if not dirs:
        raise MoelabError(f"results path {p} holds no sweep (no runs.parquet and no runs/ folder)")
    return [(d / PARQUET, _with_sweep(_table_or_folders(d), d.name)) for d in dirs]


def load(path_or_paths: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One DataFrame with a row per run of every sweep named (``sweep`` column tells them apart)."""
    paths = [path_or_paths] if isinstance(path_or_paths, str | os.PathLike) else list(path_or_paths)
    frames = [frame for p in paths for _, frame in tables(p) if len(frame.columns)]
    if not frames:
        return to_frame([])
    frame = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
    ordered = [c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]
    return frame[ordered].reset_index(drop=True)


def _with_sweep(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    if len(frame.columns) and "sweep" not in frame.columns:
        frame = frame.assign(sweep=name)
    return frame


def _table_or_folders(sweep: Path):
    """A sweep folder's runs.parquet, or its rows read from the run folders (the source of truth) when the
    table is missing or unreadable (a warning says how to rewrite it)."""
    table = sweep / PARQUET
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
    return (path / PARQUET).is_file() or (path / "runs").is_dir()
