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
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from moelab.errors import ConfigError, disk_full_message
from moelab.files import write_json_atomic
from moelab.model.dispatch import resolve
from moelab.parallel.placement import Placement
from moelab.train.config import RunConfig
from moelab.train.metrics import (
    MetricsWriter,
    git_commit,
    peak_flops,
    read_metrics,
    truncate_metrics,
    versions,
)
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
    from moelab.data import eval_windows, prepare

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
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
    import jax

    from moelab.parallel.mesh import make_mesh, mesh_shape_of

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
    from moelab.parallel.remat import jax_policy

    out = Path(out_dir)
    jax_policy(remat)  # validates the name
    tracker = tracker_names(tracker)
    check_available(tracker)
    mesh = resolve_mesh(mesh, run.train.batch_size)
    resume = check_out_dir(run, out)
    if resume:
        old = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        if old.get("status") in ("succeeded", "diverged"):
            return old  # finished: nothing to do
    data, eval_starts = prepare_data(run)  # may raise ConfigError: nothing written yet
    main = _is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", run.to_dict())
    summary = _base_summary(run, data)
    if mesh is not None:
        summary["mesh"] = str(_mesh_shape(mesh))
    summary["remat"] = remat
    ev = run.model.dropless() if run.train.eval_dropless else run.model
    summary["eval_dispatch"] = {"dispatch": ev.dispatch, "capacity_factor": ev.capacity_factor,
                                "overflow": ev.overflow, "dropless": ev == run.model.dropless()}  # fmt: skip
    if main:
        write_json_atomic(out / "summary.json", {**summary, "status": "running"})
    try:
        bar = progress if main else False
        summary = _train(run, out, data, eval_starts, summary, bar, mesh, remat, main, (tracker, group))
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


def _is_main_process() -> bool:
    import jax

    return jax.process_index() == 0


def _mesh_shape(mesh):
    from moelab.parallel.mesh import mesh_shape_of

    return mesh_shape_of(mesh)


def init_state(run: RunConfig, placement: Placement):
    """(graphdef, params, rest, opt_state, first_bad, tx) of a fresh run, created where ``placement`` says
    (on a mesh: each leaf directly on its logical-axis sharding; ``moelab.parallel.placement``)."""
    from flax import nnx

    from moelab.model import Transformer
    from moelab.train.optim import make_optimizer
    from moelab.train.step import param_labels

    m, t = run.model, run.train
    graphdef, params, rest = placement.init_model(lambda: Transformer(m, rngs=nnx.Rngs(t.seed)))
    tx = make_optimizer(t, param_labels(params))
    opt_state = placement.init_opt_state(tx, params)
    return graphdef, params, rest, opt_state, placement.scalar(np.int32(-1)), tx


def _base_summary(run: RunConfig, data) -> dict:
    from moelab.accounting import param_counts

    counts = param_counts(run.model)
    return {
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


def _train(run: RunConfig, out: Path, data, eval_starts, summary, progress, mesh, remat, main, track) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from moelab.data import eval_batches, train_batch
    from moelab.model import Transformer
    from moelab.model.stats import router_health
    from moelab.train.checkpoint import Checkpointer
    from moelab.train.noise import NoiseMonitor
    from moelab.train.optim import lr_schedule
    from moelab.train.step import make_eval_step, make_loss_fn, make_train_step, param_labels

    t0 = time.perf_counter()
    m, t = run.model, run.train
    total_steps = run.total_steps()
    tokens_per_step = t.tokens_per_step
    flops_per_token = run.flops_per_token()

    placement = Placement(mesh)
    graphdef, params, rest, opt_state, first_bad, tx = init_state(run, placement)
    state_sh = placement.shardings((params, opt_state, first_bad, rest))
    train_step = make_train_step(graphdef, tx, m, mesh=mesh, remat=remat, state_shardings=state_sh)
    lrs = np.asarray(jax.vmap(lr_schedule(t, total_steps))(jnp.arange(total_steps)), np.float32)
    seed = np.int32(t.seed)
    eval_graphdef = graphdef  # train.eval_dropless: the same parameters through a dropless dispatch
    if t.eval_dropless and m.dropless() != m:
        eval_graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(m.dropless(), rngs=nnx.Rngs(0))))
    eval_step = make_eval_step(eval_graphdef, data.tokenizer.token_bytes(), mesh=mesh)
    put_batch = placement.batch

    ckpt = Checkpointer(out / "checkpoints", keep=t.keep_checkpoints)
    start, prev_wall, prev_train, meta = 0, 0.0, 0.0, None
    restored = ckpt.restore_latest((params, opt_state, first_bad, rest))  # unreadable ones: set aside, said
    if restored is not None:
        (params, opt_state, first_bad, rest), meta = restored
        start, prev_wall, prev_train = (
            int(meta["step"]),
            float(meta["wall_time_s"]),
            float(meta["train_time_s"]),
        )
    # the gradient noise scale, probed every train.noise_every steps (moelab.train.noise)
    loss_fn = make_loss_fn(graphdef, m, mesh=mesh, remat=remat)
    noise = NoiseMonitor.for_run(run, loss_fn, param_labels(params), mesh=mesh, meta=meta)
    metrics_path = out / "metrics.jsonl"
    if main and metrics_path.exists():
        truncate_metrics(metrics_path, start)
    writer = MetricsWriter(metrics_path) if main else _MemoryWriter()
    if main:  # live trackers see every row metrics.jsonl gets (moelab.train.trackers)
        writer = with_trackers(writer, track[0], out, run.to_dict(), track[1], start)
    update_bar, close_bar = _progress_bar(progress, total_steps, start)
    peak = peak_flops()

    def evaluate(params):
        nats = nbytes = 0.0
        for batch in eval_batches(data.store.val, eval_starts, t.seq_len, t.batch_size):
            n, b = eval_step(params, rest, put_batch(batch))
            nats, nbytes = nats + float(n), nbytes + float(b)
        n_tokens = len(eval_starts) * t.seq_len
        return nats / n_tokens, nats / math.log(2) / nbytes

    pending, last_eval, last_row = [], None, {}
    train_time = prev_train
    interval_start, interval_steps = time.perf_counter(), 0
    compile_s = 0.0  # the first step of a session (compilation or cache load), left out of the throughput
    status, diverged_step = "succeeded", None
    try:
        for step in range(start, total_steps):
            batch = put_batch(train_batch(data.store.train, t.seed, step, t.batch_size, t.seq_len))
            opt_state = noise.before_step(step, params, rest, batch, seed, opt_state)
            params, opt_state, first_bad, rest, metrics = train_step(
                params, opt_state, first_bad, rest, batch, np.int32(step), lrs[step], seed
            )
            pending.append(metrics)
            if step == start:
                jax.block_until_ready(metrics)
                compile_s = time.perf_counter() - interval_start
            interval_steps += 1
            done = step + 1
            last = done == total_steps
            do_eval = done % t.eval_every == 0 or last
            do_ckpt = done % t.checkpoint_every == 0 or last
            if not (done % t.log_every == 0 or do_eval or do_ckpt or last):
                continue
            host, bad = jax.device_get((pending, first_bad))
            pending = []
            elapsed = time.perf_counter() - interval_start
            train_time += elapsed
            if int(bad) >= 0:
                status, diverged_step = "diverged", int(bad) + 1  # 1-based, as metrics "step"
                break
            timed_steps, timed_s = interval_steps, elapsed
            if done - interval_steps == start and interval_steps > 1:  # the interval holds the first step
                timed_steps, timed_s = interval_steps - 1, elapsed - compile_s
            tokens_per_s = timed_steps * tokens_per_step / max(timed_s, 1e-9)
            load = np.mean([h["load"] for h in host], axis=0)
            last_row = {
                "step": done,
                "tokens": done * tokens_per_step,
                "loss": float(np.mean([h["loss"] for h in host])),
                "lr": float(host[-1]["lr"]),
                "grad_norm": float(np.mean([h["grad_norm"] for h in host])),
                "aux_loss": float(np.mean([h["aux_loss"] for h in host])),
                "z_loss": float(np.mean([h["z_loss"] for h in host])),
                "load_min": float(load.min()),
                "load_max": float(load.max()),
                "dropped_frac": float(np.mean([h["dropped_frac"] for h in host])),
                "recycled_frac": float(np.mean([h["recycled_frac"] for h in host])),
                "tokens_per_s": tokens_per_s,
                "mfu": tokens_per_s * flops_per_token / peak,
                **noise.metrics(),
            }
            row = dict(last_row)
            if m.is_moe:  # per-layer router health over the interval; the bias its last step used
                health = router_health(
                    load,
                    np.mean([h["router"].dropped_frac for h in host], axis=0),
                    np.mean([h["router"].recycled_frac for h in host], axis=0),
                    host[-1]["router"].bias,
                )
                row["router"] = summary["router_health"] = health
            if do_eval:
                last_eval = evaluate(params)
                row["eval_loss"], row["eval_bpb"] = last_eval
            summary["expert_load"] = load.tolist()
            if do_ckpt:
                wall = prev_wall + time.perf_counter() - t0
                ckpt.save(
                    done,
                    (params, opt_state, first_bad, rest),
                    {"step": done, "wall_time_s": wall, "train_time_s": train_time, **noise.state()},
                )
            writer.write(row)
            update_bar(done, f"loss {row['loss']:.3f}" + (f" eval {row['eval_loss']:.3f}" if do_eval else ""))
            interval_start, interval_steps = time.perf_counter(), 0
        ckpt.wait()
    finally:
        close_bar()
        writer.close()
        ckpt.close()

    rows = read_metrics(metrics_path) if main else writer.rows  # other processes: this session's rows
    train_rows = [r for r in rows if "loss" in r]
    steps_done = train_rows[-1]["step"] if train_rows else start
    tokens = steps_done * tokens_per_step
    # throughput over the logged intervals (each without its session's first, compiling step)
    prev_steps = [0, *(r["step"] for r in train_rows)][: len(train_rows)]
    spans = [(r["step"] - p) * tokens_per_step for p, r in zip(prev_steps, train_rows, strict=True)]
    seconds = sum(n / r["tokens_per_s"] for n, r in zip(spans, train_rows, strict=True) if r["tokens_per_s"])
    tokens_per_s = sum(spans) / seconds if seconds > 0 else None
    evals = [r for r in rows if r.get("eval_loss") is not None]
    summary.update(
        status=status,
        diverged_step=diverged_step,
        steps=steps_done,
        tokens=tokens,
        flops=tokens * flops_per_token,
        train_loss=train_rows[-1]["loss"] if train_rows else None,
        eval_loss=evals[-1]["eval_loss"] if evals and status == "succeeded" else None,
        eval_bpb=evals[-1]["eval_bpb"] if evals and status == "succeeded" else None,
        eval_tokens=len(eval_starts) * t.seq_len,
        dropped_frac=train_rows[-1]["dropped_frac"] if train_rows else None,
        recycled_frac=train_rows[-1]["recycled_frac"] if train_rows else None,
        load_min=train_rows[-1]["load_min"] if train_rows else None,
        load_max=train_rows[-1]["load_max"] if train_rows else None,
        wall_time_s=prev_wall + time.perf_counter() - t0,
        train_time_s=train_time,
        first_step_s=compile_s,
        tokens_per_s=tokens_per_s,
        mfu=(tokens_per_s * flops_per_token / peak) if tokens_per_s else None,
        peak_flops=peak,
        checkpoint_time_s=ckpt.seconds,
        resumed_from=start or None,
        **noise.summary(seconds),
        checkpoints_set_aside=ckpt.set_aside or None,
    )
    return summary


class _MemoryWriter:
    """The metrics writer of processes other than 0: keeps the rows, writes nothing."""

    def __init__(self):
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        self.rows.append(dict(row))

    def close(self) -> None:
        pass
