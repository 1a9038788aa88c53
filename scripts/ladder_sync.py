"""Copy the finished runs of a results folder into the committed ladder data (no checkpoints), then rebuild
its runs table: ``python scripts/ladder_sync.py WORK_RESULTS/ladder data/ladder/ladder``.

The committed folder has the layout of a results folder (``runs/RUN_ID/{config.json, summary.json,
metrics.jsonl, attempts.jsonl}`` and ``runs.parquet``), so ``moelab sweep run sweeps/ladder.yaml --results
data/ladder`` counts every committed run as finished and trains only what is missing: the ladder grows over
several sittings and survives a replaced machine. Only succeeded runs are copied; a run already there is never
overwritten (a file it lacks, e.g. the ``axes.json`` of the sweep's nominal axis values that the first syncs
left out, is added).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from moelab.sweep.runid import is_run_id
from moelab.sweep.state import read_summary
from moelab.sweep.store import AXES_FILE, write_table

KEEP = ("config.json", "summary.json", "metrics.jsonl", "attempts.jsonl", AXES_FILE)


def sync(src: Path, dst: Path) -> list[str]:
    copied = []
    for run in sorted((src / "runs").iterdir()):
        summary = read_summary(run)
        if not (run.is_dir() and is_run_id(run.name) and summary and summary.get("status") == "succeeded"):
            continue
        target = dst / "runs" / run.name
        if target.exists():
            for name in KEEP:
                if (run / name).is_file() and not (target / name).exists():
                    shutil.copy2(run / name, target / name)
            continue
        tmp = target.with_name(f".{run.name}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for name in KEEP:
            if (run / name).is_file():
                shutil.copy2(run / name, tmp / name)
        tmp.rename(target)
        copied.append(run.name)
    write_table(dst)
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/ladder_sync.py SOURCE_SWEEP_FOLDER TARGET_SWEEP_FOLDER")
    done = sync(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"copied {len(done)} finished run(s): {' '.join(done)}")
