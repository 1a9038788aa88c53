"""Live progress of a sweep: runs done / running / failed, the running runs' step and loss, and an ETA.

ETA: estimated seconds left (pending runs in full, running runs less their elapsed time), scaled by how the
finished runs' real times compared with their estimates, divided by the concurrency. On a terminal it is a
``rich.live`` panel; otherwise one line per started and finished run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from moelab.sweep.plan import PlannedRun, duration


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last complete line of metrics.jsonl (reads only the file's tail)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


class SweepProgress:
    def __init__(
        self,
        name: str,
        todo: list[PlannedRun],
        conc: int,
        outcome: dict[str, Any],
        console,
        live: bool | None = None,
    ):
        self.name, self.todo, self.conc, self.outcome, self.console = name, todo, conc, outcome, console
        self.live_mode = console.is_terminal if live is None else live
        self.running: dict[str, tuple[PlannedRun, float]] = {}
        self.ratios: list[float] = []
        self.done = 0
        self.ended: set[str] = set()
        self.t0 = time.perf_counter()
        self._live = None

    def __enter__(self):
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
        return False

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def started(self, p: PlannedRun) -> None:
        self.running[p.run_id] = (p, time.perf_counter())
        if not self.live_mode:
            self.console.print(f"[{duration(self.elapsed())}] start {p.run_id} ({p.action}) {_describe(p)}")

    def finished(self, p: PlannedRun, status: str) -> None:
        _, t = self.running.pop(p.run_id, (p, time.perf_counter()))
        took = time.perf_counter() - t
        if p.est_s > 0 and status == "succeeded":
            self.ratios.append(took / p.est_s)
        self.done += 1
        self.ended.add(p.run_id)
        if not self.live_mode:
            loss = last_metrics(p.run_dir).get("eval_loss")
            extra = f" eval_loss {loss:.4f}" if isinstance(loss, float) else ""
            self.console.print(
                f"[{duration(self.elapsed())}] {status} {p.run_id} in {duration(took)}{extra} | "
                f"{self._counts()} | ETA {duration(self.eta())}"
            )

    def eta(self) -> float:
        now = time.perf_counter()
        scale = sum(self.ratios) / len(self.ratios) if self.ratios else 1.0
        pending = sum(
            p.est_s for p in self.todo if p.run_id not in self.running and p.run_id not in self.ended
        )
        running = sum(max(0.0, p.est_s * scale - (now - t)) for p, t in self.running.values())
        return (pending * scale + running) / max(1, self.conc)

    def _counts(self) -> str:
        o = self.outcome
        return (
            f"done {self.done}/{len(self.todo)} running {len(self.running)} "
            f"failed {o['failed'] + o['diverged']}"
        )

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self):
        head = Text(
            f"sweep {self.name}: {self._counts()} | elapsed {duration(self.elapsed())} | "
            f"ETA {duration(self.eta())}",
            style="bold",
        )
        table = Table(box=None, pad_edge=False)
        for col in ("run", "config", "step", "loss", "time"):
            table.add_column(col)
        now = time.perf_counter()
        for p, t in self.running.values():
            m = last_metrics(p.run_dir)
            total = p.trial.run.total_steps()
            loss = m.get("loss")
            table.add_row(
                p.run_id,
                _describe(p),
                f"{m.get('step', 0)}/{total}",
                f"{loss:.3f}" if isinstance(loss, float) else "-",
                duration(now - t),
            )
        return Group(head, table)


def _describe(p: PlannedRun) -> str:
    m = p.trial.run.model
    return (
        f"E={m.n_experts} k={m.top_k} N={p.active_params:.3g} D={p.tokens:.3g} seed={p.trial.run.train.seed}"
    )
