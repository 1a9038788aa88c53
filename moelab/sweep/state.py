"""What a run folder says about its run, and what the sweep does about it (Marin-style status files).

``summary.json`` (written atomically by ``moelab.train``) carries ``status``; ``checkpoints/`` holds the orbax
CheckpointManager steps (one folder per step, named by the step number; unfinished saves carry a temporary
suffix and are ignored).

=============  ==============================================  ==========================================
state          folder                                          action
=============  ==============================================  ==========================================
``new``        no summary.json                                 ``run``
``started``    status running, no checkpoint yet               ``run`` (starts over)
``interrupted``  status running, a finished checkpoint         ``resume`` (from the latest checkpoint)
``succeeded``  status succeeded                                ``skip`` (files untouched)
``failed``     status failed                                   ``hold`` (reported), ``rerun`` if asked
``diverged``   status diverged                                 ``hold`` (reported), ``rerun`` if asked
=============  ==============================================  ==========================================
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

ACTIONS = ("run", "resume", "skip", "rerun", "hold")
FINISHED = ("succeeded", "failed", "diverged")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / "summary.json")


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Finished checkpoint steps under run_dir/checkpoints (orbax names each step's folder by its number)."""
    folder = Path(run_dir) / "checkpoints"
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and (folder / n).is_dir())


def run_state(run_dir: Path) -> str:
    summary = read_summary(run_dir)
    if summary is None:
        return "new"
    status = summary.get("status")
    if status in FINISHED:
        return status
    return "interrupted" if checkpoint_steps(run_dir) else "started"


def decide(state: str, rerun_failed: bool = False) -> str:
    """The action for a run in ``state`` (table in the module docstring)."""
    if state in ("new", "started"):
        return "run"
    if state == "interrupted":
        return "resume"
    if state == "succeeded":
        return "skip"
    return "rerun" if rerun_failed else "hold"


def set_aside(run_dir: Path, sweep_dir: Path) -> Path:
    """Move a failed run's folder to SWEEP/failed/RUN_ID-UTC (kept, not deleted) before a rerun."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest = Path(sweep_dir) / "failed" / f"{Path(run_dir).name}-{stamp}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(dest))
    return dest
