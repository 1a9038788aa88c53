"""Reading one results folder (docs/architecture.md) into what the report draws: the runs table, the training
curves from each run's metrics.jsonl, the final per-expert loads from summary.json, and provenance."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import moelab
from analysis.load import load_runs
from moelab.errors import MoelabError

__all__ = ["ResultsData", "load_results", "read_curves"]


@dataclass
class ResultsData:
    root: Path
    runs: pd.DataFrame  # one row per run (runs.parquet schema)
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)  # run_id -> metrics.jsonl rows
    expert_load: dict[str, list[list[float]]] = field(default_factory=dict)  # run_id -> [layer][expert]
    provenance: dict[str, object] = field(default_factory=dict)

    @property
    def sweep_name(self) -> str:
        if "sweep" in self.runs and self.runs["sweep"].notna().any():
            return str(self.runs["sweep"].dropna().iloc[0])
        return self.root.name

    @property
    def ok(self) -> pd.DataFrame:
        """Succeeded runs with a finite held-out loss: the points the laws are fitted to."""
        df = self.runs
        mask = (df["status"] == "succeeded") & df["loss"].notna()
        return df[mask & df["loss"].map(lambda x: math.isfinite(float(x)) if pd.notna(x) else False)]


def _load_table(root: Path) -> pd.DataFrame:
    """The runs table (``analysis.load.load_runs``); the sweep table shows failed and diverged runs too."""
    return load_runs(root, succeeded_only=False)


def _run_dir(root: Path, row: pd.Series) -> Path:
    rid = str(row["run_id"])
    if "run_dir" in row and isinstance(row["run_dir"], str) and row["run_dir"]:
        p = Path(row["run_dir"])
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            return p
    return root / "runs" / rid  # the folder moved (copied results): fall back to the layout


def read_curves(run_dir: Path) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame; a torn last line (a run still writing) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def load_results(root: str | Path) -> ResultsData:
    """Everything the report needs from ``root`` (a results/SWEEP folder holding runs.parquet)."""
    root = Path(root)
    if not (root / "runs.parquet").is_file():
        raise MoelabError(f"results folder {root}: no runs.parquet (run 'moelab sweep run SWEEP.yaml' first)")
    try:
        runs = _load_table(root).reset_index(drop=True)
    except MoelabError:
        raise
    except Exception as exc:  # a corrupt parquet is the user's file, not our bug
        raise MoelabError(
            f"results folder {root}: cannot read runs.parquet ({type(exc).__name__}: {exc})"
        ) from exc
    if runs.empty:
        raise MoelabError(f"results folder {root}: runs.parquet holds no runs")
    for col in ("run_id", "status", "loss"):
        if col not in runs:
            raise MoelabError(f"results folder {root}: runs.parquet lacks the column '{col}'")
    data = ResultsData(root=root, runs=runs)
    summaries = {}
    for _, row in runs.iterrows():
        rd = _run_dir(root, row)
        rid = str(row["run_id"])
        c = read_curves(rd)
        if not c.empty:
            data.curves[rid] = c
        sp = rd / "summary.json"
        if sp.is_file():
            try:
                summaries[rid] = json.loads(sp.read_text())
            except json.JSONDecodeError:
                continue
            load = summaries[rid].get("expert_load")
            if load:
                data.expert_load[rid] = load
    data.provenance = _provenance(root, runs, summaries)
    return data


def _first(runs: pd.DataFrame, col: str, summaries: dict, key: str | None = None) -> str | None:
    if col in runs and runs[col].notna().any():
        vals = sorted({str(v) for v in runs[col].dropna()})
        return ", ".join(vals)
    vals = sorted({str(s.get(key or col)) for s in summaries.values() if s.get(key or col)})
    return ", ".join(vals) or None


def _provenance(root: Path, runs: pd.DataFrame, summaries: dict) -> dict[str, object]:
    sweep_file = root / "sweep.yaml"
    versions = next((s["versions"] for s in summaries.values() if isinstance(s.get("versions"), dict)), {})
    return {
        "results_dir": str(root.resolve()),
        "sweep_file": str(sweep_file) if sweep_file.is_file() else None,
        "sweep_yaml": sweep_file.read_text() if sweep_file.is_file() else None,
        "moelab_version (runs)": _first(runs, "moelab_version", summaries),
        "moelab_version (report)": moelab.__version__,
        "jax_version": _first(runs, "jax_version", {}) or versions.get("jax"),
        "python_version": _first(runs, "python_version", {}) or versions.get("python"),
        "git_commit": _first(runs, "git_commit", summaries),
        "corpus_fingerprint": _first(runs, "corpus_fingerprint", summaries),
        "machine": f"{platform.node()} · {platform.machine()} · {platform.system()} {platform.release()} · "
        f"python {platform.python_version()}",
    }
