"""The results store: one row per run in RESULTS/SWEEP/runs.parquet (schema in docs/architecture.md).

A row joins a run folder's ``config.json`` (RunConfig.to_dict()), its ``summary.json`` and the accounting of
``moelab.accounting``. The table is rebuilt from the run folders (the source of truth) and rewritten
atomically (temporary file + ``os.replace``) after every finished run, so a reader never sees half a file
and a killed driver leaves the previous complete table. Runs are keyed by run id: one row per run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from moelab.accounting import param_counts, train_flops_per_token
from moelab.config import ModelConfig
from moelab.errors import is_number
from moelab.sweep.runid import is_run_id
from moelab.sweep.state import read_json
from moelab.train.identity import upgrade

IDENTITY = ("run_id", "sweep", "status", "run_dir", "seed")
MODEL = (
    "n_experts",
    "top_k",
    "n_shared_experts",
    "shared_ratio",
    "granularity",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "d_expert",
    "d_shared",
    "vocab_size",
    "capacity_factor",
    "overflow",
    "cla_share",
)
ACCOUNTING = (
    "active_params",
    "active_params_with_embedding",
    "total_params",
    "total_params_with_embedding",
    "flops_per_token",
)
TRAINING = ("seq_len", "batch_size", "tokens", "flops", "steps", "lr", "schedule", "expert_lr_scale")
OUTCOME = (
    "loss",
    "bpb",
    "train_loss",
    "wall_time_s",
    "tokens_per_s",
    "mfu",
    "dropped_frac",
    "recycled_frac",
    "load_min",
    "load_max",
    "diverged_step",
    "error",
    "b_simple",
    "b_simple_expert",
    "b_simple_shared",
    "noise_overhead",
)
PROVENANCE = ("moelab_version", "jax_version", "python_version", "git_commit", "corpus_fingerprint")
COLUMNS = IDENTITY + MODEL + ACCOUNTING + TRAINING + OUTCOME + PROVENANCE

PARQUET = "runs.parquet"
#: A sweep run's nominal axis values (the spec's requested ``axes`` point, before the family rule rounds
#: them), written by the sweep driver; they become the ``nominal_<axis>`` columns, so analysis counts the
#: levels a sweep asked for rather than the rounding of their realisations (analysis.domain).
AXES_FILE = "axes.json"
NOMINAL_PREFIX = "nominal_"


def run_row(
    run_dir: Path, sweep: str | None = None, config: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The runs.parquet row of one run folder, or None when the run has no config or no summary yet."""
    run_dir = Path(run_dir)
    config = config or read_json(run_dir / "config.json")
    summary = read_json(run_dir / "summary.json")
    if config is None or summary is None or "model" not in config:
        return None
    config = upgrade(config)  # a field the writing code lacked reads as its baseline (what that code did)
    model_d = dict(config.get("model") or {})
    data_d = dict(config.get("data") or {})
    train_d = dict(config.get("train") or {})
    model = ModelConfig.from_dict(model_d)
    counts = param_counts(model)
    seq_len = data_d.get("seq_len", train_d.get("seq_len", model.max_seq_len))
    fpt = train_flops_per_token(model, int(seq_len))
    versions = summary.get("versions") or {}
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    # Every config field: model fields by name, data/train fields by name unless they clash, else prefixed.
    row.update(model_d)
    for prefix, section in (("data", data_d), ("train", train_d)):
        for k, v in section.items():
            v = json.dumps(v) if isinstance(v, dict | list) else v
            row[k if k not in row or row[k] is None and k in COLUMNS else f"{prefix}_{k}"] = v
    planned_tokens = train_d.get("tokens")
    tokens = summary.get("tokens") if summary.get("tokens") is not None else planned_tokens
    load = summary.get("expert_load")
    flat = [float(x) for x in _flatten(load)] if load is not None else []
    row.update(
        run_id=run_dir.name,
        sweep=sweep or run_dir.parent.parent.name,
        status=summary.get("status"),
        run_dir=str(run_dir),
        seed=train_d.get("seed", row.get("seed")),
        shared_ratio=model.shared_ratio,
        granularity=model.granularity,
        active_params=counts.active,
        active_params_with_embedding=counts.active_with_embedding,
        total_params=counts.total,
        total_params_with_embedding=counts.total_with_embedding,
        flops_per_token=fpt,
        seq_len=int(seq_len),
        tokens=tokens,
        flops=summary.get("flops")
        if summary.get("flops") is not None
        else (fpt * tokens if tokens is not None else None),
        steps=summary.get("steps", row.get("steps")),
        loss=summary.get("eval_loss"),
        bpb=summary.get("eval_bpb"),
        train_loss=summary.get("train_loss"),
        wall_time_s=summary.get("wall_time_s"),
        tokens_per_s=summary.get("tokens_per_s"),
        mfu=summary.get("mfu"),
        dropped_frac=summary.get("dropped_frac"),
        recycled_frac=summary.get("recycled_frac"),
        load_min=min(flat) if flat else summary.get("load_min"),
        load_max=max(flat) if flat else summary.get("load_max"),
        diverged_step=summary.get("diverged_step"),
        error=_short(summary.get("error")),
        **{k: summary.get(k) for k in ("b_simple", "b_simple_expert", "b_simple_shared", "noise_overhead")},
        moelab_version=versions.get("moelab"),
        jax_version=versions.get("jax"),
        python_version=versions.get("python"),
        git_commit=summary.get("git_commit"),
        corpus_fingerprint=summary.get("corpus_fingerprint"),
    )
    for k, v in (read_json(run_dir / AXES_FILE) or {}).items():
        if k != "seed" and is_number(v):
            row[NOMINAL_PREFIX + k] = float(v)
    return row


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows of every run folder under SWEEP/runs/ that has a config and a summary, sorted by run id."""
    runs = Path(sweep_dir) / "runs"
    if not runs.is_dir():
        return []
    rows = []
    for child in sorted(runs.iterdir()):
        if child.is_dir() and is_run_id(child.name):
            row = run_row(child, sweep=Path(sweep_dir).name)
            if row is not None:
                rows.append(row)
    return rows


def to_frame(rows: list[dict[str, Any]]):
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS) + extra)
    for col in (
        "loss",
        "bpb",
        "train_loss",
        "wall_time_s",
        "tokens_per_s",
        "mfu",
        "flops",
        "flops_per_token",
        "shared_ratio",
        "granularity",
        "dropped_frac",
        "recycled_frac",
        "load_min",
        "load_max",
        "lr",
        "b_simple",
        "b_simple_expert",
        "b_simple_shared",
        "noise_overhead",
    ):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in (
        "active_params",
        "active_params_with_embedding",
        "total_params",
        "total_params_with_embedding",
        "tokens",
        "steps",
        "seq_len",
        "batch_size",
        "seed",
        "diverged_step",
    ):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in frame.columns:  # parquet needs one type per column: mixed Python objects become text
        if frame[col].dtype == object:
            kinds = {type(v) for v in frame[col] if v is not None and v == v}
            if len(kinds) > 1 or kinds - {str, bool, int, float}:
                frame[col] = frame[col].map(lambda v: None if v is None else str(v))
    return frame


def write_table(sweep_dir: Path) -> Path:
    """Rebuild RESULTS/SWEEP/runs.parquet from the run folders, atomically. Returns its path."""
    sweep_dir = Path(sweep_dir)
    frame = to_frame(collect_rows(sweep_dir))
    path = sweep_dir / PARQUET
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{PARQUET}.{os.getpid()}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _flatten(value: Any):
    if isinstance(value, list | tuple):
        for v in value:
            yield from _flatten(v)
    elif isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        yield value


def _short(text: Any) -> str | None:
    if text is None:
        return None
    line = str(text).strip().splitlines()
    return line[-1][:300] if line else None
