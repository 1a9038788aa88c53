"""The run loop: ``run_training(run, out_dir)`` trains one model and writes its run folder.

Run folder (docs/architecture.md): ``config.json`` (RunConfig.to_dict()), ``metrics.jsonl``, ``summary.json``
(status running | succeeded | failed | diverged) and ``checkpoints/`` (orbax). Order of events:

1. Check everything that can be wrong with the input (config, corpus, field, seq_len, vocabulary, an out
folder holding a different config) and raise ``ConfigError`` before anything is written. 2. Write config.json
and a ``running`` summary; restore the latest checkpoint if there is one (metrics lines after it are dropped:
the resumed run writes them again, identically, because batches depend only on (seed, step) and the router key
on (seed, step)). 3. Train; log every ``log_every`` steps, evaluate every ``eval_every`` steps, checkpoint
every ``checkpoint_every`` steps, and all three at the last step. A non-finite loss ends the run as
``diverged`` (not an exception); any exception writes a ``failed`` summary with the error and is re-raised.

On a device mesh (``mesh="data=2,expert=4"``, docs/parallel.md) the same loop runs SPMD: the parameters, the
rest of the model state and the optimiser state are created directly on their logical-axis shardings
(``moelab.parallel.placement.Placement``), every batch is split over the batch axes, and the jitted step
follows those input shardings. In a multi-process run every process builds the same *global* batch (batches
are a pure function of (seed, step), so no exchange is needed) and contributes the rows its devices hold
(``jax.make_array_from_callback``); checkpoints are written by all processes together (orbax) and restored
onto the target shardings; only process 0 writes config.json, metrics.jsonl and summary.json. The mesh and
the remat policy are execution options: they do not enter the config or the run id.

The code: ``run_training`` checks the input and writes the folder's first files, then a ``Session`` trains:
``__init__`` (fresh or restored state, jitted steps), ``step``, ``log``, ``evaluate``, ``checkpoint`` and
``finish`` (the summary), with ``moelab.parallel.placement.Placement`` holding what differs between one
device and a mesh (where arrays are created and put, which process writes).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from moelab import enable_compilation_cache
from moelab.accounting import param_counts
from moelab.data import eval_batches, eval_windows, prepare, train_batch
from moelab.errors import ConfigError, disk_full_message
from moelab.files import write_json_atomic
from moelab.model import Transformer
from moelab.model.dispatch import resolve
from moelab.model.stats import router_health
from moelab.parallel.mesh import make_mesh, mesh_shape_of
from moelab.parallel.placement import Placement
from moelab.parallel.remat import check_policy
from moelab.train.checkpoint import Checkpointer
from moelab.train.config import RunConfig
from moelab.train.metrics import (
    MetricsWriter,
    git_commit,
    peak_flops,
    read_metrics,
    truncate_metrics,
    versions,
)
from moelab.train.noise import NoiseMonitor
from moelab.train.optim import lr_schedule, make_optimizer
from moelab.train.step import make_eval_step, make_loss_fn, make_train_step, param_labels
from moelab.train.trackers import check_available, tracker_names, with_trackers


def _first_difference(a, b, prefix="") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            diff = _first_difference(va, vb, f"{prefix}{key}.")
            if diff:
                return diff
        elif va != vb:
            return f"{prefix}{key}: {va!r} there, {vb!r} here"
    return ""


def check_out_dir(run: RunConfig, out: Path) -> bool:
    """True when ``out`` already holds this run (resume); ConfigError when it holds another config.

    "This run" is the run id's identity (``RunConfig.identity()``): a folder whose config differs only in
    fields the identity leaves out (a dense run's expert-only fields, a field at its baseline that a newer
    schema spells out) holds the same run."""
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        return False
    try:
        saved = RunConfig.from_saved(json.loads(cfg_path.read_text()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"--out: {out} holds an unreadable config.json ({str(exc).splitlines()[0]})"
        ) from None
    if saved.identity() != run.identity():
        diff = _first_difference(saved.semantic_dict(), run.semantic_dict())
        raise ConfigError(
            f"--out: {out} holds a run with a different config ({diff}); "
            "use another folder"
        )
    return True


def prepare_data(run: RunConfig):
    d = run.data
    data = prepare(
        d.corpus,
        fmt=d.format,
        field=d.field,
        tokenizer=d.tokenizer,
        vocab_size=run.model.vocab_size,
        val_fraction=d.val_fraction,
        hf_split=d.hf_split,
        hf_config=d.hf_config,
    )
    if data.tokenizer.vocab_size > run.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={run.model.vocab_size} is smaller than the tokenizer's "
            f"{data.tokenizer.vocab_size} ids"
        )
    t = run.train
    if len(data.store.train) <= t.seq_len + 1:
        raise ConfigError(
            f"train.seq_len={t.seq_len} needs more than {t.seq_len + 1} training tokens; "
            f"{d.corpus} has {len(data.store.train)}"
        )
    starts = eval_windows(data.store.val, t.eval_tokens, t.seq_len, t.batch_size)
    return data, starts


def _progress_bar(progress, total: int, start: int):
    """(update(step, text), close()) for progress=None (auto: a terminal), True, False or a callable."""
    if callable(progress):
        return (lambda step, text: progress(step, total, text)), (lambda: None)
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return (lambda step, text: None), (lambda: None)
    bar = Progress(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        transient=False,
        console=Console(stderr=True),  # stderr, as the isatty check: stdout carries the summary line
    )
    task = bar.add_task("", total=total, completed=start)
    bar.start()
    return (lambda step, text: bar.update(task, completed=step, description=text)), bar.stop


def resolve_mesh(mesh, batch_size: int | None = None):
    """A ``jax.sharding.Mesh`` (or None) from None, a ``"data=2,expert=4"`` string, a MeshShape or a Mesh.

    ConfigError (one line) for a malformed string, too few devices, or a batch the mesh's batch axes
    (data x fsdp x expert) do not divide (it would be replicated over them: every device doing all the work).
    """
    if mesh is None:
        return None
    if not isinstance(mesh, jax.sharding.Mesh):
        mesh = make_mesh(mesh)
    shape = mesh_shape_of(mesh)
    if batch_size is not None and batch_size % shape.batch_shards:
        raise ConfigError(
            f"train.batch_size={batch_size} must be divisible by the mesh's batch shards "
            f"(data x fsdp x expert = {shape.batch_shards} for --mesh {shape})"
        )
    return mesh


def run_training(
    run: RunConfig, out_dir, *, progress=None, mesh=None, remat: str = "none", tracker=None, group=None
) -> dict:
    """Train ``run`` into ``out_dir`` (resuming from its checkpoints) and return the summary dict.

    ``progress``: None shows a rich progress bar when stderr is a terminal, True/False force it on/off, and a
    callable is called as ``progress(step, total_steps, text)`` at every log line (``text``: losses).
    ``mesh``: None (one device), a mesh string such as ``"data=2,expert=4"``, a ``MeshShape`` or a
    ``jax.sharding.Mesh`` (``moelab.parallel.mesh``). ``remat``: ``none`` | ``minimal`` | ``full``
    (``moelab.parallel.remat``). Neither changes the result beyond float rounding, nor the run id.
    ``tracker``: ``tensorboard`` | ``wandb`` or a list (``moelab.train.trackers``); ``group``: the sweep.
    Raises ConfigError (nothing written) for bad input; re-raises any error of the loop after recording it.
    """
    enable_compilation_cache()  # the run's steps reuse compilations of earlier runs of the same shapes
    out = Path(out_dir)
    check_policy(remat)
    tracker = tracker_names(tracker)
    check_available(tracker)
    placement = Placement(resolve_mesh(mesh, run.train.batch_size))
    if check_out_dir(run, out):
        old = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        if old.get("status") in ("succeeded", "diverged"):
            return old  # finished: nothing to do
    data, eval_starts = prepare_data(run)  # may raise ConfigError: nothing written yet
    main = placement.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", run.to_dict())
    summary = _base_summary(run, data, placement, remat)
    if main:
        write_json_atomic(out / "summary.json", {**summary, "status": "running"})
    try:
        bar = progress if main else False
        session = Session(run, out, placement, data=data, eval_starts=eval_starts, summary=summary,
                          remat=remat, progress=bar, tracker=(tracker, group))  # fmt: skip
        session.train()
    except (KeyboardInterrupt, SystemExit):
        # An interruption is not a failure: the status stays ``running`` and the next start resumes from the
        # latest checkpoint.
        raise
    except BaseException as exc:
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip().rstrip(":")
        msg = disk_full_message(exc) or msg
        if main:
            # on a full disk this write may fail too: keep the original error (the summary then stays
            # ``running``, and the run resumes from its last checkpoint once there is space)
            with contextlib.suppress(OSError):
                write_json_atomic(out / "summary.json", {**summary, "status": "failed", "error": msg})
        raise
    if main:
        write_json_atomic(out / "summary.json", summary)
    return summary


def init_state(run: RunConfig, placement: Placement):
    """(graphdef, params, rest, opt_state, first_bad, tx) of a fresh run, created where ``placement`` says
    (on a mesh: each leaf directly on its logical-axis sharding; ``moelab.parallel.placement``)."""
    m, t = run.model, run.train
    graphdef, params, rest = placement.init_model(lambda: Transformer(m, rngs=nnx.Rngs(t.seed)))
    tx = make_optimizer(t, param_labels(params))
    opt_state = placement.init_opt_state(tx, params)
    return graphdef, params, rest, opt_state, placement.scalar(np.int32(-1)), tx


def _base_summary(run: RunConfig, data, placement: Placement, remat: str) -> dict:
    counts = param_counts(run.model)
    summary = {
        "status": "running",
        "eval_loss": None,
        "eval_bpb": None,
        "train_loss": None,
        "steps": 0,
        "tokens": 0,
        "flops": 0.0,
        "active_params": counts.active,
        "total_params": counts.total,
        "active_params_with_embedding": counts.active_with_embedding,
        "total_params_with_embedding": counts.total_with_embedding,
        "flops_per_token": run.flops_per_token(),
        "total_steps": run.total_steps(),
        "wall_time_s": 0.0,
        "tokens_per_s": None,
        "mfu": None,
        "expert_load": None,
        "dropped_frac": None,
        "recycled_frac": None,
        "dispatch": resolve(run.model.dispatch) if run.model.is_moe else None,  # what "auto" picked
        "diverged_step": None,
        "error": None,
        "versions": versions(),
        "git_commit": git_commit(),
        "corpus_fingerprint": data.fingerprint,
        "corpus": data.corpus.meta,
        "tokenizer": data.tokenizer.id,
        "unigram_entropy": data.store.unigram_entropy(data.tokenizer.vocab_size),
    }
    if placement.mesh is not None:
        summary["mesh"] = str(mesh_shape_of(placement.mesh))
    summary["remat"] = remat
    ev = run.model.dropless() if run.train.eval_dropless else run.model
    summary["eval_dispatch"] = {"dispatch": resolve(ev.dispatch) if ev.is_moe else None,
                                "capacity_factor": ev.capacity_factor,
                                "overflow": ev.overflow, "dropless": ev == run.model.dropless()}  # fmt: skip
    return summary


class Session:
    """One training session of a run (a fresh start or a resume), in five parts: ``__init__`` (state fresh or
    restored, the jitted steps, checkpointer, noise probe, metrics writer), ``step`` (one optimiser step),
    ``log`` (a metrics row from the steps since the last one), ``evaluate`` (held-out loss and bits per byte),
    ``checkpoint`` and ``finish`` (the summary). ``train`` runs them in order. Where the arrays live (one
    device or a mesh) is the ``Placement``'s business; the session code is the same for both."""

    def __init__(self, run: RunConfig, out: Path, placement: Placement, *, data, eval_starts, summary: dict,
                 remat: str, progress, tracker):  # fmt: skip
        self.t0 = time.perf_counter()
        self.run, self.out, self.data, self.eval_starts = run, out, data, eval_starts
        self.placement, self.summary = placement, summary
        m, t = run.model, run.train
        self.total_steps = run.total_steps()
        mesh = placement.mesh
        graphdef, params, rest, opt_state, first_bad, tx = init_state(run, placement)
        state = (params, opt_state, first_bad, rest)  # what a step updates (rest: the routers' biases)
        self.train_step = make_train_step(graphdef, tx, m, mesh=mesh, remat=remat,
                                          state_shardings=placement.shardings(state))
        self.lrs = np.asarray(jax.vmap(lr_schedule(t, self.total_steps))(jnp.arange(self.total_steps)),
                              np.float32)  # fmt: skip
        self.seed = np.int32(t.seed)
        eval_graphdef = graphdef  # train.eval_dropless: the same parameters through a dropless dispatch
        if t.eval_dropless and m.dropless() != m:
            eval_graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(m.dropless(), rngs=nnx.Rngs(0))))
        self.eval_step = make_eval_step(eval_graphdef, data.tokenizer.token_bytes(), mesh=mesh)

        self.ckpt = Checkpointer(out / "checkpoints", keep=t.keep_checkpoints)
        self.start, self.prev_wall, self.train_time, meta = 0, 0.0, 0.0, None
        restored = self.ckpt.restore_latest(state)  # unreadable ones are set aside, and said
        if restored is not None:
            state, meta = restored
            self.start = int(meta["step"])
            self.prev_wall, self.train_time = float(meta["wall_time_s"]), float(meta["train_time_s"])
        self.state = state
        # the gradient noise scale, probed every train.noise_every steps (moelab.train.noise)
        loss_fn = make_loss_fn(graphdef, m, mesh=mesh, remat=remat)
        self.noise = NoiseMonitor.for_run(run, loss_fn, param_labels(params), mesh=mesh, meta=meta)

        self.metrics_path = out / "metrics.jsonl"
        if placement.is_main:
            if self.metrics_path.exists():
                truncate_metrics(self.metrics_path, self.start)
            # live trackers see every row metrics.jsonl gets (moelab.train.trackers)
            self.writer = with_trackers(MetricsWriter(self.metrics_path), tracker[0], out, run.to_dict(),
                                        tracker[1], self.start)  # fmt: skip
        else:
            self.writer = _MemoryWriter()
        self.update_bar, self.close_bar = _progress_bar(progress, self.total_steps, self.start)
        self.peak = peak_flops()
        self.pending: list = []  # the steps' metrics (device arrays) since the last log line
        self.first_bad = -1  # the first non-finite step (0-based) as last read from the device
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        self.compile_s = 0.0  # a session's first step (compilation or cache load), left out of the throughput

    # ------------------------------------------------------------------------------------------- the parts
    def step(self, step: int) -> None:
        """One optimiser step (the noise probe first, at its interval); metrics stay on the device."""
        t = self.run.train
        tokens = train_batch(self.data.store.train, t.seed, step, t.batch_size, t.seq_len)
        batch = self.placement.batch(tokens)
        params, opt_state, first_bad, rest = self.state
        opt_state = self.noise.before_step(step, params, rest, batch, self.seed, opt_state)
        *state, metrics = self.train_step(
            params, opt_state, first_bad, rest, batch, np.int32(step), self.lrs[step], self.seed
        )
        self.state = tuple(state)
        self.pending.append(metrics)
        if step == self.start:
            jax.block_until_ready(metrics)
            self.compile_s = time.perf_counter() - self.interval_start
        self.interval_steps += 1

    def log(self, done: int) -> dict | None:
        """The metrics row of the steps since the last one (None when a step diverged: ``first_bad``)."""
        host, bad = jax.device_get((self.pending, self.state[2]))
        self.pending = []
        elapsed = time.perf_counter() - self.interval_start
        self.train_time += elapsed
        self.first_bad = int(bad)
        if self.first_bad >= 0:
            return None
        timed_steps, timed_s = self.interval_steps, elapsed
        if done - self.interval_steps == self.start and self.interval_steps > 1:  # holds the first step
            timed_steps, timed_s = self.interval_steps - 1, elapsed - self.compile_s
        tokens_per_s = timed_steps * self.run.train.tokens_per_step / max(timed_s, 1e-9)
        load = np.mean([h["load"] for h in host], axis=0)
        self.summary["expert_load"] = load.tolist()
        def mean(key: str) -> float:
            return float(np.mean([h[key] for h in host]))

        row = {
            "step": done,
            "tokens": done * self.run.train.tokens_per_step,
            "loss": mean("loss"),
            "lr": float(host[-1]["lr"]),
            "grad_norm": mean("grad_norm"),
            "aux_loss": mean("aux_loss"),
            "z_loss": mean("z_loss"),
            "load_min": float(load.min()),
            "load_max": float(load.max()),
            "dropped_frac": mean("dropped_frac"),
            "recycled_frac": mean("recycled_frac"),
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * self.run.flops_per_token() / self.peak,
            **self.noise.metrics(),
        }
        if self.run.model.is_moe:  # per-layer router health over the interval; the bias its last step used
            health = router_health(
                load,
                np.mean([h["router"].dropped_frac for h in host], axis=0),
                np.mean([h["router"].recycled_frac for h in host], axis=0),
                host[-1]["router"].bias,
            )
            row["router"] = self.summary["router_health"] = health
        return row

    def evaluate(self) -> tuple[float, float]:
        """(held-out loss in nats per token, bits per byte) over the run's evaluation windows."""
        t = self.run.train
        nats = nbytes = 0.0
        for batch in eval_batches(self.data.store.val, self.eval_starts, t.seq_len, t.batch_size):
            n, b = self.eval_step(self.state[0], self.state[3], self.placement.batch(batch))
            nats, nbytes = nats + float(n), nbytes + float(b)
        return nats / (len(self.eval_starts) * t.seq_len), nats / math.log(2) / nbytes

    def checkpoint(self, done: int) -> None:
        wall = self.prev_wall + time.perf_counter() - self.t0
        meta = {"step": done, "wall_time_s": wall, "train_time_s": self.train_time, **self.noise.state()}
        self.ckpt.save(done, self.state, meta)

    def train(self) -> dict:
        """Steps from the restored one to the last; log every ``log_every`` steps, evaluate every
        ``eval_every``, checkpoint every ``checkpoint_every``, all three at the last step; a diverged step
        ends the session. Returns ``finish``'s summary."""
        t = self.run.train
        status, diverged_step = "succeeded", None
        try:
            for step in range(self.start, self.total_steps):
                self.step(step)
                done = step + 1
                last = done == self.total_steps
                do_eval = done % t.eval_every == 0 or last
                do_ckpt = done % t.checkpoint_every == 0 or last
                if not (done % t.log_every == 0 or do_eval or do_ckpt):
                    continue
                row = self.log(done)
                if row is None:
                    status, diverged_step = "diverged", self.first_bad + 1  # 1-based, as metrics "step"
                    break
                if do_eval:
                    row["eval_loss"], row["eval_bpb"] = self.evaluate()
                if do_ckpt:
                    self.checkpoint(done)
                self.writer.write(row)
                text = f"loss {row['loss']:.3f}" + (f" eval {row['eval_loss']:.3f}" if do_eval else "")
                self.update_bar(done, text)
                self.interval_start, self.interval_steps = time.perf_counter(), 0
            self.ckpt.wait()
        finally:
            self.close_bar()
            self.writer.close()
            self.ckpt.close()
        return self.finish(status, diverged_step)

    def finish(self, status: str, diverged_step: int | None) -> dict:
        """The run's summary from its metrics (every session's rows, so a resumed run sums them all)."""
        run, t = self.run, self.run.train
        tokens_per_step, flops_per_token = t.tokens_per_step, run.flops_per_token()
        # other processes: this session's rows
        rows = read_metrics(self.metrics_path) if self.placement.is_main else self.writer.rows
        train_rows = [r for r in rows if "loss" in r]
        last = train_rows[-1] if train_rows else {}
        steps_done = last.get("step", self.start)
        tokens = steps_done * tokens_per_step
        # throughput over the logged intervals (each without its session's first, compiling step)
        prev_steps = [0, *(r["step"] for r in train_rows)][: len(train_rows)]
        spans = [(r["step"] - p) * tokens_per_step for p, r in zip(prev_steps, train_rows, strict=True)]
        timed = zip(spans, train_rows, strict=True)
        seconds = sum(n / r["tokens_per_s"] for n, r in timed if r["tokens_per_s"])
        tokens_per_s = sum(spans) / seconds if seconds > 0 else None
        evals = [r for r in rows if r.get("eval_loss") is not None]
        final_eval = evals[-1] if evals and status == "succeeded" else {}
        self.summary.update(
            status=status,
            diverged_step=diverged_step,
            steps=steps_done,
            tokens=tokens,
            flops=tokens * flops_per_token,
            train_loss=last.get("loss"),
            eval_loss=final_eval.get("eval_loss"),
            eval_bpb=final_eval.get("eval_bpb"),
            eval_tokens=len(self.eval_starts) * t.seq_len,
            dropped_frac=last.get("dropped_frac"),
            recycled_frac=last.get("recycled_frac"),
            load_min=last.get("load_min"),
            load_max=last.get("load_max"),
            wall_time_s=self.prev_wall + time.perf_counter() - self.t0,
            train_time_s=self.train_time,
            first_step_s=self.compile_s,
            tokens_per_s=tokens_per_s,
            mfu=(tokens_per_s * flops_per_token / self.peak) if tokens_per_s else None,
            peak_flops=self.peak,
            checkpoint_time_s=self.ckpt.seconds,
            resumed_from=self.start or None,
            **self.noise.summary(seconds),
            checkpoints_set_aside=self.ckpt.set_aside or None,
        )
        return self.summary


class _MemoryWriter:
    """The metrics writer of processes other than 0: keeps the rows, writes nothing."""

    def __init__(self):
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        self.rows.append(dict(row))

    def close(self) -> None:
        pass
