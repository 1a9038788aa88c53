"""Loading runs: ``results/SWEEP/runs.parquet`` (schema: docs/architecture.md) or any table via a column map.

``load_runs`` accepts a runs.parquet file, a sweep folder holding one, a results root holding several sweep
folders, a CSV file (``.csv`` or ``.csv.gz``, with ``columns=``), or a list of these, and returns one pandas
DataFrame with at least the columns ``loss``, ``active_params`` and ``tokens`` (numeric), ``sweep`` and
``run_id``. Problems are one-line :class:`moelab.errors.MoelabError` messages naming the file and the column.

A CSV is read in this order (:func:`read_csv`): ``where`` keeps the rows that satisfy a filter
(:mod:`analysis.where`, raw CSV names or mapped schema names); ``final_by`` keeps the last logged row of each
run (largest ``step_col``, or the last in file order); ``columns`` renames CSV columns to schema fields;
``consts`` adds fields that are one value for the whole table (``tokens=1.31e11``); ``tokens_from_flops``
derives D = C / (6N).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.where import filter_rows
from moelab.errors import MoelabError
from moelab.results import tables

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
# Fields a CSV column (or a constant) can be mapped to: every feature a law uses plus the run's name.
SCHEMA_FIELDS = (*NUMERIC, "run_id")


def is_csv(path: str | Path) -> bool:
    """A path :func:`load_runs` reads as a CSV (``.csv`` or gzip-compressed ``.csv.gz``)."""
    return str(path).lower().endswith((".csv", ".csv.gz"))


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".csv.gz", ".csv"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def check_column_map(
    columns: Mapping[str, str] | None, consts: Mapping[str, float] | None = None
) -> tuple[dict[str, str], dict[str, float]]:
    """Validate a column map (schema field -> CSV column) and constants (schema field -> value)."""
    columns, consts = dict(columns or {}), dict(consts or {})
    allowed = ", ".join(SCHEMA_FIELDS)
    for flag, names in (("--col", columns), ("--const", consts)):
        for name in names:
            if name not in SCHEMA_FIELDS:
                raise MoelabError(f"{flag} {name}: unknown field; allowed: {allowed}")
    both = sorted(set(columns) & set(consts))
    if both:
        raise MoelabError(f"field {both[0]} is given both as a column (--col) and a constant (--const)")
    for name, v in consts.items():
        if name == "run_id":
            raise MoelabError("--const run_id: a run name cannot be one value for every run")
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise MoelabError(f"--const {name}={v!r}: not a number") from None
        if not np.isfinite(v):
            raise MoelabError(f"--const {name}={v}: must be finite")
        consts[name] = v
    return columns, consts


def read_csv(
    path: str | Path,
    columns: Mapping[str, str],
    *,
    consts: Mapping[str, float] | None = None,
    where: str | None = None,
    final_by: str | Iterable[str] | None = None,
    step_col: str | None = None,
    tokens_from_flops: bool = False,
) -> pd.DataFrame:
    """Read a CSV into the runs schema: ``columns`` maps schema field -> CSV column, ``consts`` schema
    field -> one value for every run; ``where``, ``final_by`` and ``step_col`` select rows (module docstring).

    With ``tokens_from_flops`` the ``tokens`` column is derived as D = C / (6 N) from ``flops`` and
    ``active_params`` (Hoffmann et al. 2022's C = 6ND, as Besiroglu et al. 2024 do for the extracted data).
    """
    path = Path(path)
    columns, consts = check_column_map(columns, consts)
    if not path.is_file():
        raise MoelabError(f"{path}: no such CSV file")
    try:
        raw = pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for malformed files
        raise MoelabError(
            f"{path}: cannot read as CSV ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    listing = ", ".join(map(str, raw.columns))
    missing = [c for c in columns.values() if c not in raw.columns]
    if missing:
        raise MoelabError(f"{path}: no column {missing[0]!r}; columns are {listing}")
    raw = filter_rows(raw, where, aliases=columns, source=str(path))
    if final_by is not None:
        raw = _final_rows(raw, final_by, step_col, columns, path)
    elif step_col is not None:
        raise MoelabError("--step-col needs --final-by (the column naming each run)")
    df = pd.DataFrame({name: raw[col] for name, col in columns.items()}, index=raw.index)
    for name, col in columns.items():
        if name in NUMERIC and not pd.api.types.is_numeric_dtype(df[name]):
            coerced = pd.to_numeric(df[name], errors="coerce")
            bad = coerced.isna() & df[name].notna()
            if bad.any():
                first = df[name][bad].iloc[0]
                raise MoelabError(
                    f"{path}: column {col!r} (mapped to {name}) has non-numeric value {first!r}"
                )
            df[name] = coerced
    for name, v in consts.items():
        df[name] = v
    if tokens_from_flops:
        if "flops" not in df or "active_params" not in df:
            raise MoelabError("deriving tokens = C/(6N) needs a compute column and a parameter column")
        df["tokens"] = df["flops"] / (6.0 * df["active_params"])
    stem = _stem(path)
    df["sweep"] = stem
    if "run_id" in df:
        df["run_id"] = df["run_id"].astype(str)
    elif final_by is not None:
        keys = [final_by] if isinstance(final_by, str) else list(final_by)
        cols = [columns.get(k, k) if k not in raw.columns else k for k in keys]
        df["run_id"] = [f"{stem}-" + "-".join(map(str, t)) for t in raw[cols].itertuples(index=False)]
    else:
        df["run_id"] = [f"{stem}-{i}" for i in raw.index]
    if "n_experts" not in df:
        df["n_experts"] = 1
    return df.reset_index(drop=True)


def _final_rows(
    raw: pd.DataFrame, final_by, step_col: str | None, columns: Mapping[str, str], path: Path
) -> pd.DataFrame:
    """The last logged row of each run: the largest ``step_col`` per ``final_by`` group (file order on ties
    or without a step column)."""
    keys = [final_by] if isinstance(final_by, str) else list(final_by)
    listing = ", ".join(map(str, raw.columns))

    def resolve(flag: str, name: str) -> str:
        if name in raw.columns:
            return name
        if name in columns and columns[name] in raw.columns:
            return columns[name]
        raise MoelabError(f"{flag} {name}: no such column in {path}; columns are {listing}")

    keys = [resolve("--final-by", k) for k in keys]
    if step_col is None:
        return raw.groupby(keys, sort=False, dropna=False).tail(1)
    step = resolve("--step-col", step_col)
    steps = pd.to_numeric(raw[step], errors="coerce")
    if steps.isna().any():
        raise MoelabError(f"--step-col {step_col}: column {step!r} has a missing or non-numeric value")
    order = np.argsort(steps.to_numpy(), kind="stable")
    return raw.iloc[order].groupby(keys, sort=False, dropna=False).tail(1).sort_index()


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
    consts: Mapping[str, float] | None = None,
    where: str | None = None,
    final_by: str | Iterable[str] | None = None,
    step_col: str | None = None,
    tokens_from_flops: bool = False,
    succeeded_only: bool = True,
) -> pd.DataFrame:
    """Load runs into one validated DataFrame (see the module docstring).

    ``columns`` (schema name -> CSV column) is required for CSV files, e.g.
    ``{"active_params": "Model Size", "flops": "Training FLOP", "loss": "loss"}`` and ``tokens_from_flops``;
    ``consts``, ``final_by`` and ``step_col`` apply to CSV files (:func:`read_csv`). ``where`` filters CSV
    rows before anything else, and the rows of results folders by their schema names.
    With ``succeeded_only``, runs whose ``status`` is not ``succeeded`` are dropped with a warning (count).
    """
    paths = [path_or_paths] if isinstance(path_or_paths, str | Path) else list(path_or_paths)
    if not paths:
        raise MoelabError("no results paths given")
    frames = []
    for p in map(Path, paths):
        if is_csv(p):
            if not columns:
                raise MoelabError(f"{p}: a CSV needs a column mapping (--col FIELD=COLUMN, or --n-col ...)")
            frames.append(
                read_csv(
                    p,
                    columns,
                    consts=consts,
                    where=where,
                    final_by=final_by,
                    step_col=step_col,
                    tokens_from_flops=tokens_from_flops,
                )
            )
            continue
        for source, df in tables(p):  # moelab.results: the one reader of runs tables
            df = validate_runs(df, str(source))
            frames.append(filter_rows(df, where, source=str(source)))
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


def compute_of(df: pd.DataFrame) -> np.ndarray:
    """Training compute per run: the ``flops`` column where present, else 6 N D (Hoffmann et al. 2022)."""
    if "flops" in df.columns and np.all(np.isfinite(df["flops"].to_numpy(dtype=np.float64))):
        return df["flops"].to_numpy(dtype=np.float64)
    return 6.0 * df["active_params"].to_numpy(dtype=np.float64) * df["tokens"].to_numpy(dtype=np.float64)
