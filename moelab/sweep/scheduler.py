"""Run a sweep through Ray: one task per trial with its resources, retries, live progress, clean Ctrl-C.

Ray does the scheduling work it is good at: each trial is a task with ``num_cpus`` / ``num_gpus`` / custom
resources (Ray places it and sets ``CUDA_VISIBLE_DEVICES``; GPU tasks get a fresh worker per task, Ray's
default ``max_calls=1``), and ``max_retries`` re-runs a task whose worker died; the retry resumes from the
run's checkpoints. The driver keeps at most ``max_concurrency`` trials in flight, rebuilds runs.parquet after
every finished run, and on Ctrl-C cancels what runs (their folders stay ``running`` with their checkpoints, so
the next ``moelab sweep run`` resumes them) and shuts down the Ray instance it started.

Ray: an embedded local instance by default (``ray.init(address="local")``, token authentication left on as
Ray 2.60 enables it, no dashboard), or a cluster through ``address`` / ``RAY_ADDRESS``. On a cluster the
results folder must be on storage every node sees (NFS, a GCS/S3 mount), as for Marin's executor.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Console

from moelab.errors import MoelabError
from moelab.files import write_json_atomic
from moelab.sweep.plan import PlannedRun, duration, make_plan, sweep_dir
from moelab.sweep.progress import SweepProgress
from moelab.sweep.spec import SweepSpec
from moelab.sweep.state import read_json, set_aside
from moelab.sweep.store import AXES_FILE, write_table
from moelab.sweep.trial import TRAINER_ENV, death_reason, execute_trial, mark_failed, thread_env
from moelab.train.trackers import check_available


class SweepInterrupted(MoelabError):
    """Ctrl-C during a sweep: running trials were stopped and will resume on the next run."""

    exit_code = 130


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Connect to Ray: the running session if any, ``address``/RAY_ADDRESS, else a new embedded instance."""
    import ray  # heavy (seconds to import): only a sweep that runs trials needs it

    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = dict(os.environ)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
    if address:
        kwargs["address"] = address
        _use_token_if_present()
    else:
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs.update(address="local", include_dashboard=False, num_cpus=num_cpus or os.cpu_count() or 1)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise MoelabError(f"--address {address}: cannot connect to the Ray cluster ({exc})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at a ``host:port`` (or ``ray://host:port``) address: ``ray.init``
    itself keeps retrying the cluster's GCS for minutes. Other forms (``auto``) are left to Ray."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise MoelabError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            "`ray start --head` or give the head node's host:port"
        ) from None


def _use_token_if_present() -> None:
    """Send the cluster's token when one is on this machine (``ray start`` turns token authentication on).

    Ray 2.60 enables token mode itself only for the local instances it starts; a driver joining a cluster
    needs ``RAY_AUTH_MODE=token``. Left alone when RAY_AUTH_MODE is set (Ray's helper respects it)."""
    with contextlib.suppress(ImportError, AttributeError):  # a private Ray helper: absent in other versions
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextlib.contextmanager
def sweep_lock(path: Path):
    """One driver per sweep folder at a time (an flock, released by the OS even if the driver is killed)."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MoelabError(
                f"sweep folder {path} is in use by another `moelab sweep run`; wait for it or stop it first"
            ) from None
        yield
    finally:
        os.close(fd)


def run_sweep(
    spec: SweepSpec,
    results: str | Path = "results",
    *,
    address: str | None = None,
    rerun_failed: bool = False,
    max_concurrency: int | None = None,
    num_cpus: int | None = None,
    trainer: str | None = None,
    console=None,
    live: bool | None = None,
) -> dict[str, Any]:
    """Plan, then train every run that is not finished; returns counts and the runs.parquet path."""
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    trials = spec.trials()  # validates every config before anything starts
    check_available(spec.tracker, "tracker")  # a tracker's package is missing: one line, nothing written
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _probe(address)  # an unreachable cluster fails before anything is written
    root = sweep_dir(spec, results)
    t0 = time.perf_counter()
    with sweep_lock(root):
        planned, _, _ = make_plan(spec, results, rerun_failed, trials)
        todo = [p for p in planned if p.action in ("run", "resume", "rerun")]
        _record_axes(p for p in planned if p.action == "skip")  # finished runs from before axes.json
        outcome = {
            "sweep": spec.name,
            "runs": len(planned),
            "skipped": sum(p.action == "skip" for p in planned),
            "held": sum(p.action == "hold" for p in planned),
            "succeeded": 0,
            "failed": 0,
            "diverged": 0,
            "trained": 0,
            "table": str(root / "runs.parquet"),
        }
        if not todo:
            write_table(root)
            console.print(
                f"sweep {spec.name}: nothing to run ({outcome['skipped']} finished, {outcome['held']} held)"
            )
            outcome["wall_s"] = time.perf_counter() - t0
            return outcome
        for p in todo:
            _prepare(p, root)
        trainer = trainer or os.environ.get(TRAINER_ENV)
        with ray_session(address, num_cpus) as ray:
            conc = max_concurrency or spec.max_concurrency or _fits(ray, spec)
            outcome["concurrency"] = conc
            _schedule(ray, spec, todo, conc, trainer, root, outcome, console, live)
    outcome["wall_s"] = time.perf_counter() - t0
    return outcome


def _fits(ray, spec: SweepSpec) -> int:
    """How many trials the cluster's resources hold at once."""
    avail = ray.cluster_resources()
    r = spec.resources
    limits = [avail.get("CPU", 1) // r.cpus if r.cpus else 1e9]
    if r.gpus:
        limits.append(avail.get("GPU", 0) // r.gpus)
    limits += [avail.get(k, 0) // v for k, v in r.custom.items()]
    return max(1, int(min(limits)))


def _prepare(p: PlannedRun, root: Path) -> None:
    """Ready a run folder: a failed run set aside for its rerun, any previous worker gone, config.json."""
    if p.action == "rerun":
        set_aside(p.run_dir, root)
    elif p.action in ("run", "resume"):
        _wait_previous_attempt(p.run_dir)
    p.run_dir.mkdir(parents=True, exist_ok=True)
    if read_json(p.run_dir / "config.json") is None:
        write_json_atomic(p.run_dir / "config.json", p.trial.run.to_dict())
    _record_axes([p])


def _record_axes(planned) -> None:
    """Write each run's nominal axis values (AXES_FILE) where the folder exists and lacks them."""
    for p in planned:
        if p.run_dir.is_dir() and read_json(p.run_dir / AXES_FILE) is None:
            write_json_atomic(p.run_dir / AXES_FILE, p.trial.point)


def _wait_previous_attempt(run_dir: Path, timeout_s: float = 20.0) -> None:
    """A killed driver's Ray workers die with it, within seconds; never let two trainers share a folder."""
    try:
        last = json.loads((run_dir / "attempts.jsonl").read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return
    if last.get("host") != socket.gethostname():
        return
    pid = int(last.get("pid", 0))
    deadline = time.monotonic() + timeout_s
    while _alive_ray_worker(pid):
        if time.monotonic() > deadline:
            raise MoelabError(f"run {run_dir.name} is still being trained by process {pid}; stop it first")
        time.sleep(0.2)


def _alive_ray_worker(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
    return b"ray::" in cmd and not zombie


def trial_order(spec: SweepSpec, todo: list[PlannedRun]) -> list[PlannedRun]:
    """Longest first (LPT): the best makespan bound of greedy list scheduling (Graham 1969); or, with
    ``order: listed``, the spec's own order, for a sweep that will not finish in one sitting and whose first
    runs matter most."""
    return list(todo) if spec.order == "listed" else sorted(todo, key=lambda p: -p.est_s)


def _schedule(
    ray,
    spec: SweepSpec,
    todo: list[PlannedRun],
    conc: int,
    trainer: str | None,
    root: Path,
    outcome: dict[str, Any],
    console,
    live: bool | None,
) -> None:
    env = thread_env(spec.resources.cpus, spec.resources.gpus)
    if trainer:
        env[TRAINER_ENV] = trainer
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    remote = ray.remote(execute_trial)
    options = dict(
        **spec.resources.ray_options(),
        max_retries=spec.retries,
        retry_exceptions=False,
        runtime_env={"env_vars": env},
    )
    pending = deque(trial_order(spec, todo))
    inflight: dict[Any, PlannedRun] = {}
    progress = SweepProgress(spec.name, todo, conc, outcome, console, live)
    try:
        with progress:
            while pending or inflight:
                while pending and len(inflight) < conc:
                    p = pending.popleft()
                    ref = remote.options(**options, name=f"trial-{p.run_id}").remote(
                        p.trial.run.to_dict(), str(p.run_dir), trainer, spec.tracker, spec.name
                    )
                    inflight[ref] = p
                    progress.started(p)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    p = inflight.pop(ref)
                    try:
                        summary = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # retries exhausted: the worker kept dying
                        why = death_reason(p.run_dir)  # e.g. the kernel's OOM killer, which Ray cannot see
                        summary = mark_failed(
                            p.run_dir,
                            f"worker lost after {spec.retries} retries"
                            + (f" ({why})" if why else "")
                            + f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        )
                    status = summary.get("status", "failed")
                    outcome["trained"] += 1
                    outcome[status if status in ("succeeded", "failed", "diverged") else "failed"] += 1
                    write_table(root)
                    progress.finished(p, status)
                progress.refresh()
    except KeyboardInterrupt:
        for ref in inflight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)  # SIGKILL: the trainer gets no chance to call it a failure
        with contextlib.suppress(Exception):  # let the kills land before Ray shuts down (which sends SIGTERM)
            ray.wait(list(inflight), num_returns=len(inflight), timeout=10)
        write_table(root)
        raise SweepInterrupted(
            f"interrupted: {outcome['trained']} run(s) finished this time; {len(inflight)} stopped and "
            f"{len(pending)} not started will resume with the next `moelab sweep run`"
        ) from None
    console.print(
        f"sweep {spec.name}: {outcome['succeeded']} succeeded, {outcome['failed']} failed, "
        f"{outcome['diverged']} diverged, {outcome['skipped']} already finished "
        f"in {duration(progress.elapsed())}; table {root / 'runs.parquet'}"
    )
