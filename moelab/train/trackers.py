"""Live trackers: the metrics of metrics.jsonl, as they are written, in TensorBoard or Weights & Biases.

``moelab train --tracker tensorboard`` (or ``wandb``, or both) and ``tracker: tensorboard`` in a sweep YAML.
Nothing is imported or required unless a tracker is asked for; metrics.jsonl stays the record either way.

- ``tensorboard``: event files in ``RUN_DIR/tensorboard/`` through tensorboardX (a light writer: no
  TensorFlow, no PyTorch); ``tensorboard --logdir results/NAME/runs`` shows a sweep's runs side by side. The
  run's config is written as hyper-parameters (HParams tab: one ``section.field`` each, the sweep name as
  ``sweep``) and as text. A resumed run restarts its event stream at the checkpoint step (``purge_step``), so
  the steps it trains again replace those the interrupted attempt logged instead of doubling them.
- ``wandb``: a W&B run in ``RUN_DIR/wandb/``, offline by default (no account or network needed; upload later
  with ``wandb sync RUN_DIR/wandb/offline-run-*``; ``WANDB_MODE=online`` streams), the config as the run's
  config, the sweep name as the run's group, the run folder's name as its name, project ``$WANDB_PROJECT``
  or ``moelab``.

Why these two (docs/training.md): they are what the field's JAX codebases log to. MaxText writes TensorBoard
event files; Levanter and Marin log to W&B (Levanter also TensorBoard). TensorBoard runs locally with nothing
to sign up for; W&B is where most LLM groups compare runs. MLflow's file store was the third candidate: a far
heavier dependency tree for what the two above already give.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from moelab.errors import ConfigError, is_number

TRACKERS = ("tensorboard", "wandb")
_PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb"}


def tracker_names(value: str | Iterable[str] | None, field: str = "--tracker") -> tuple[str, ...]:
    """The tracker names of ``value`` (None, one name, a comma list or a list), validated; () for none."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = []
    for item in items:
        name = item.strip() if isinstance(item, str) else item
        if name not in TRACKERS:
            raise ConfigError(f"{field} must be one of {'|'.join(TRACKERS)}, got {name!r}")
        if name not in names:
            names.append(name)
    return tuple(names)


def check_available(names: Iterable[str], field: str = "--tracker") -> None:
    """ConfigError (one line, before anything is written) when a tracker's package is not installed."""
    for name in names:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ConfigError(
                f"{field} {name} needs the {_PACKAGES[name]} package: pip install 'moelab[trackers]'"
            )


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """``{"model.d_model": 32, ...}``: scalars as they are, None as "None", lists and mappings as JSON."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = "None" if value is None else json.dumps(value)
    return out


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k != "step" and is_number(v)
    }


class TensorBoardTracker:
    def __init__(self, out: Path, config: dict, group: str | None, name: str, start_step: int):
        from tensorboardX import SummaryWriter  # optional dependency (moelab[trackers])
        from tensorboardX.summary import hparams

        # purge_step: TensorBoard drops what an interrupted attempt logged from this step on
        self.writer = SummaryWriter(
            logdir=str(Path(out) / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )
        params = {**flat_config(config), "sweep": group or "", "run": name}
        for summary in hparams(params, {"eval_loss": 0.0}):  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")

    def log(self, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, int(row["step"]))
        self.writer.flush()  # live: a row every log_every steps, not every flush_secs

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, out: Path, config: dict, group: str | None, name: str, start_step: int):
        import wandb  # optional dependency (moelab[trackers])

        self.start_step = start_step
        self.run = wandb.init(
            mode=os.environ.get("WANDB_MODE", "offline"),
            dir=str(out),
            project=os.environ.get("WANDB_PROJECT", "moelab"),
            group=group,
            name=name,
            config=config,
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(_numbers(row), step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()


_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


class TrackedWriter:
    """The metrics writer, also sending every row to the trackers (the loop's only hook)."""

    def __init__(self, writer, trackers: list):
        self.writer, self.trackers = writer, trackers

    def write(self, row: dict) -> None:
        self.writer.write(row)
        for tracker in self.trackers:
            tracker.log(row)

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            for tracker in self.trackers:
                tracker.close()


def with_trackers(writer, names, out: Path, config: dict, group: str | None, start_step: int):
    """``writer`` unchanged without trackers, else a :class:`TrackedWriter` over it and each tracker."""
    names = tracker_names(names)
    if not names:
        return writer
    run_name = Path(out).name
    return TrackedWriter(writer, [_CLASSES[n](out, config, group, run_name, start_step) for n in names])
