"""Loading runs: ``results/SWEEP/runs.parquet`` (schema: docs/architecture.md) or a CSV through a column map.

``load_runs`` accepts a runs.parquet file, a sweep folder holding one, a results root holding several sweep
folders, a CSV file (with ``columns=``), or a list of these, and returns one pandas DataFrame with at least
the columns ``loss``, ``active_params`` and ``tokens`` (numeric), ``sweep`` and ``run_id``. Problems are
one-line :class:`moelab.errors.MoelabError` messages naming the file and the column.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from moelab.errors import MoelabError

REQUIRED = ("loss", "active_params", "tokens")
NUMERIC = (
    "loss",
    "active_params",
    "tokens",
    "flops",
    "n_experts",
    "top_k",
    "n_shared_experts",
    "shared_ratio",
    "granularity",
    "total_params",
    "flops_per_token",
    "bpb",
    "train_loss",
)
RUNS_FILE = "runs.parquet"


def _sweep_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / RUNS_FILE).is_file():
        return [path / RUNS_FILE]
    if path.is_dir():
        found = sorted(p / RUNS_FILE for p in path.iterdir() if (p / RUNS_FILE).is_file())
        if found:
            return found
        raise MoelabError(f"{path}: no {RUNS_FILE} in it or in its sub-folders (run a sweep first)")
    raise MoelabError(f"{path}: no such file or folder")


def read_csv(
    path: str | Path, columns: Mapping[str, str], *, tokens_from_flops: bool = False
) -> pd.DataFrame:
    """Read a CSV and rename its columns to the runs schema: ``columns`` maps schema name -> CSV column.

    With ``tokens_from_flops`` the ``tokens`` column is derived as D = C / (6 N) from ``flops`` and
    ``active_params`` (Hoffmann et al. 2022's C = 6ND, as Besiroglu et al. 2024 do for the extracted data).
    """
    path = Path(path)
    if not path.is_file():
        raise MoelabError(f"{path}: no such CSV file")
    try:
        raw = pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for malformed files
        raise MoelabError(
            f"{path}: cannot read as CSV ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    missing = [c for c in columns.values() if c not in raw.columns]
    if missing:
        raise MoelabError(f"{path}: no column {missing[0]!r}; columns are {', '.join(map(str, raw.columns))}")
    df = pd.DataFrame({name: raw[col] for name, col in columns.items()})
    for c in df.columns:
        if c in NUMERIC:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    if tokens_from_flops:
        if "flops" not in df or "active_params" not in df:
            raise MoelabError("deriving tokens = C/(6N) needs a compute column and a parameter column")
        df["tokens"] = df["flops"] / (6.0 * df["active_params"])
    df["sweep"] = path.stem
    df["run_id"] = [f"{path.stem}-{i}" for i in range(len(df))]
    if "n_experts" not in df:
        df["n_experts"] = 1
    return df


def validate_runs(df: pd.DataFrame, source: str = "runs") -> pd.DataFrame:
    """Check the columns every analysis needs; coerce known numeric columns; return the frame."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise MoelabError(
            f"{source}: missing column(s) {', '.join(missing)} (schema in docs/architecture.md)"
        )
    for c in NUMERIC:
        if c in df.columns and not pd.api.types.is_numeric_dtype(df[c]):
            coerced = pd.to_numeric(df[c], errors="coerce")
            bad = coerced.isna() & df[c].notna()
            if bad.any():
                raise MoelabError(f"{source}: column {c} has non-numeric value {df[c][bad].iloc[0]!r}")
            df[c] = coerced
    for c in ("active_params", "tokens"):
        v = df[c].to_numpy(dtype=np.float64)
        if np.any(v[np.isfinite(v)] <= 0):
            raise MoelabError(f"{source}: column {c} must be > 0")
    return df


def load_runs(
    path_or_paths: str | Path | Iterable[str | Path],
    *,
    columns: Mapping[str, str] | None = None,
    tokens_from_flops: bool = False,
    succeeded_only: bool = True,
) -> pd.DataFrame:
    """Load runs into one validated DataFrame (see the module docstring).

    ``columns`` (schema name -> CSV column) is required for CSV files, e.g.
    ``{"active_params": "Model Size", "flops": "Training FLOP", "loss": "loss"}`` and ``tokens_from_flops``.
    With ``succeeded_only``, runs whose ``status`` is not ``succeeded`` are dropped with a warning (count).
    """
    paths = [path_or_paths] if isinstance(path_or_paths, str | Path) else list(path_or_paths)
    if not paths:
        raise MoelabError("no results paths given")
    frames = []
    for p in map(Path, paths):
        if p.suffix.lower() == ".csv":
            if not columns:
                raise MoelabError(f"{p}: a CSV needs a column mapping (e.g. --n-col, --loss-col, --d-col)")
            frames.append(read_csv(p, columns, tokens_from_flops=tokens_from_flops))
            continue
        for f in _sweep_files(p):
            try:
                df = pd.read_parquet(f)
            except Exception as exc:
                raise MoelabError(f"{f}: cannot read as parquet ({type(exc).__name__})") from exc
            if "sweep" not in df.columns:
                df["sweep"] = f.parent.name
            frames.append(validate_runs(df, str(f)))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    df = validate_runs(df, str(paths[0]) if len(paths) == 1 else "runs")
    if succeeded_only and "status" in df.columns:
        ok = df["status"].astype(str) == "succeeded"
        if (~ok).any():
            counts = df.loc[~ok, "status"].astype(str).value_counts().to_dict()
            warnings.warn(
                f"dropped {int((~ok).sum())} run(s) not succeeded: {counts}", UserWarning, stacklevel=2
            )
            df = df[ok].reset_index(drop=True)
    if df.empty:
        raise MoelabError(f"{paths[0]}: no runs to analyse")
    return df
