"""The dry-run plan of a sweep: every run with its size, budget, estimated time and what ``run`` will do.

Estimated time = ``overhead_s + flops / flops_per_s`` (less the part done before a checkpoint, for a resume).

``moelab sweep plan`` also checks every run (:func:`check_plan`) against the spec's ``checks``: tokens per
activated parameter under ``min_tokens_per_param``, or more than one epoch of the corpus's training split.
The corpus size is ``checks.corpus_tokens`` when stated, else the training split of a prepared token store of
this corpus and tokenizer (the cache), else, for byte tokens, counted from the corpus; otherwise the plan says
it is unknown.
``flops_per_s`` is, in order: the spec's ``estimate.flops_per_s``; the median of
``flops / (wall_time_s - overhead_s)`` over this sweep's succeeded runs; ``DEFAULT_FLOPS_PER_S_PER_CPU``
times the trial's CPUs.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console
from rich.table import Table

from moelab.accounting import param_counts
from moelab.data.corpus import load_corpus
from moelab.data.shards import store_path, val_documents
from moelab.data.tokenizer import tokenizer_id
from moelab.errors import ConfigError
from moelab.presets import router_family
from moelab.sweep.runid import adopt
from moelab.sweep.spec import DEFAULT_FLOPS_PER_S_PER_CPU, SweepSpec, Trial
from moelab.sweep.state import checkpoint_steps, decide, read_summary, run_state
from moelab.sweep.store import write_table


@dataclass
class PlannedRun:
    trial: Trial
    run_dir: Path
    state: str
    action: str
    active_params: int
    total_params: int
    tokens: int
    flops: float
    est_s: float

    @property
    def run_id(self) -> str:
        return self.trial.run_id


def sweep_dir(spec: SweepSpec, results: str | Path) -> Path:
    return Path(results) / spec.name


def calibrate(spec: SweepSpec, sweep_path: Path, trials: list[Trial]) -> tuple[float, str]:
    """Training FLOP/s for the estimates and where the figure comes from."""
    if spec.flops_per_s:
        return float(spec.flops_per_s), "spec"
    rates = []
    for t in trials:
        s = read_summary(sweep_path / "runs" / t.run_id)
        if s and s.get("status") == "succeeded" and s.get("wall_time_s") and s.get("tokens"):
            flops = float(s["tokens"]) * t.run.flops_per_token()
            wall = float(s["wall_time_s"])
            rates.append(flops / max(wall - spec.overhead_s, 0.1 * wall))
    if rates:
        return statistics.median(rates), f"median of {len(rates)} finished runs"
    return DEFAULT_FLOPS_PER_S_PER_CPU * spec.resources.cpus, "default"


def make_plan(
    spec: SweepSpec, results: str | Path, rerun_failed: bool = False, trials: list[Trial] | None = None
) -> tuple[list[PlannedRun], float, str]:
    trials = spec.trials() if trials is None else trials
    root = sweep_dir(spec, results)
    if adopt(root / "runs", [t.run for t in trials]):
        write_table(root)  # folders took their current names: the table follows
    rate, rate_src = calibrate(spec, root, trials)
    planned = []
    for t in trials:
        run_dir = root / "runs" / t.run_id
        state = run_state(run_dir)
        counts = param_counts(t.run.model)
        tokens = t.run.budget_tokens()
        flops = tokens * t.run.flops_per_token()
        remaining = 1.0
        if state == "interrupted":
            done = checkpoint_steps(run_dir)[-1]
            remaining = max(0.0, 1.0 - done / t.run.total_steps())
        action = decide(state, rerun_failed)
        est = spec.overhead_s + remaining * flops / rate if action != "skip" and action != "hold" else 0.0
        planned.append(PlannedRun(t, run_dir, state, action, counts.active, counts.total, tokens, flops, est))
    return planned, rate, rate_src


def plan_rows(planned: list[PlannedRun]) -> list[dict[str, Any]]:
    rows = []
    for p in planned:
        m = p.trial.run.model
        rows.append(
            {
                "run_id": p.run_id,
                "n_experts": m.n_experts,
                "router": router_family(m.to_dict()),
                "top_k": m.top_k,
                "shared_ratio": round(m.shared_ratio, 3),
                "granularity": round(m.granularity, 2),
                "d_model": m.d_model,
                "n_layers": m.n_layers,
                "seed": p.trial.run.train.seed,
                "active_params": p.active_params,
                "total_params": p.total_params,
                "tokens": p.tokens,
                "flops": p.flops,
                "est_s": p.est_s,
                "state": p.state,
                "action": p.action,
            }
        )
    return rows


@dataclass
class RunCheck:
    """One run against the spec's checks: tokens per activated parameter, epochs of the corpus, flags."""

    tokens_per_param: float
    epochs: float | None
    flags: list[str]


def corpus_train_tokens(run: Any, spec: SweepSpec, cache: dict | None = None) -> tuple[float | None, str]:
    """(training tokens of the run's corpus or None, where the number comes from)."""
    if spec.checks.get("corpus_tokens"):
        return float(spec.checks["corpus_tokens"]), "checks.corpus_tokens"
    d = run.data
    key = (d.corpus, d.format, d.field, d.tokenizer, run.model.vocab_size, d.val_fraction, d.hf_config)
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = _count_corpus(run)
    return cache[key]


def _count_corpus(run: Any) -> tuple[float | None, str]:
    d = run.data
    if d.corpus.startswith("hf:") or d.format == "hf":
        return None, "unknown for an hf: corpus (state checks.corpus_tokens)"
    try:
        corpus = load_corpus(d.corpus, d.format, d.field, hf_split=d.hf_split, hf_config=d.hf_config)
    except ConfigError as exc:
        return None, f"unknown ({str(exc).splitlines()[0]})"
    tok = SimpleNamespace(id=tokenizer_id(d.tokenizer, run.model.vocab_size, corpus.fingerprint))
    meta = store_path(corpus, tok, d.val_fraction) / "meta.json"
    if meta.is_file():
        return float(json.loads(meta.read_text())["splits"]["train"]["tokens"]), "the prepared token store"
    if d.tokenizer == "byte":
        val = val_documents(len(corpus.documents), d.val_fraction)
        n = sum(len(doc.encode("utf-8")) + 1 for doc, v in zip(corpus.documents, val, strict=True) if not v)
        return float(n), "counted (byte tokens of the training split)"
    return None, "unknown until the corpus is tokenized once (or state checks.corpus_tokens)"


def check_plan(spec: SweepSpec, planned: list[PlannedRun]) -> tuple[list[RunCheck], list[str]]:
    """Every run against the spec's checks, and notes saying where the corpus sizes come from."""
    floor = float(spec.checks.get("min_tokens_per_param", 1.0))
    cache: dict = {}
    out, notes = [], {}
    for p in planned:
        tpp = p.tokens / max(p.active_params, 1)
        corpus, source = corpus_train_tokens(p.trial.run, spec, cache)
        notes[f"{p.trial.run.data.corpus}: {human(corpus) if corpus else '?'} training tokens ({source})"] = 1
        epochs = p.tokens / corpus if corpus else None
        flags = []
        if tpp < floor:
            flags.append(f"D/N {tpp:.2g} < {floor:g}")
        if epochs is not None and epochs > 1:
            flags.append(f"{epochs:.2g} epochs")
        out.append(RunCheck(tpp, epochs, flags))
    return out, list(notes)


def render_plan(
    spec: SweepSpec,
    planned: list[PlannedRun],
    rate: float,
    rate_src: str,
    concurrency: int,
    console=None,
    checks: tuple[list[RunCheck], list[str]] | None = None,
) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"sweep {spec.name}: {len(planned)} runs ({spec.generator})", title_justify="left")
    routers = "router" in spec.axes  # a column only for sweeps over router recipes
    for col in (
        "run_id",
        "experts",
        *(("router",) if routers else ()),
        "top_k",
        "shared",
        "gran",
        "d_model x L",
        "seed",
        "active",
        "total",
        "tokens",
        "FLOPs",
        "D/N",
        "epochs",
        "est",
        "action",
    ):
        table.add_column(col, justify="left" if col in ("run_id", "action") else "right")
    per_run = checks[0] if checks else [None] * len(planned)
    colour = {"run": "cyan", "resume": "yellow", "skip": "green", "rerun": "magenta", "hold": "red"}
    for p, r, c in zip(planned, plan_rows(planned), per_run, strict=True):
        table.add_row(
            r["run_id"],
            str(r["n_experts"]),
            *((r["router"],) if routers else ()),
            str(r["top_k"]),
            f"{r['shared_ratio']:.2f}",
            f"{r['granularity']:.2g}",
            f"{r['d_model']}x{r['n_layers']}",
            str(r["seed"]),
            human(r["active_params"]),
            human(r["total_params"]),
            human(r["tokens"]),
            f"{r['flops']:.2e}",
            _flagged(f"{r['tokens'] / r['active_params']:.3g}", c, "D/N"),
            _flagged("-" if c is None or c.epochs is None else f"{c.epochs:.2g}", c, "epochs"),
            duration(r["est_s"]) if r["est_s"] else "-",
            f"[{colour[p.action]}]{p.action}[/]" + (f" ({p.state})" if p.action in ("hold", "rerun") else ""),
        )
    console.print(table)
    todo = [p for p in planned if p.action in ("run", "resume", "rerun")]
    counts = {a: sum(p.action == a for p in planned) for a in ("run", "resume", "rerun", "skip", "hold")}
    total_s = sum(p.est_s for p in todo)
    console.print(
        " ".join(f"{a} {n}" for a, n in counts.items() if n)
        + f" | estimated {duration(total_s)} of trial time, about {duration(total_s / max(1, concurrency))}"
        f" at concurrency {concurrency} ({rate:.2g} FLOP/s per trial: {rate_src})"
    )
    if counts["hold"]:
        console.print(
            f"[red]{counts['hold']} failed or diverged run(s) are held: rerun them with --rerun-failed[/]"
        )
    if checks:
        flagged = [(p, c) for p, c in zip(planned, checks[0], strict=True) if c.flags]
        floor = spec.checks.get("min_tokens_per_param", 1.0)
        console.print(f"corpus: {'; '.join(checks[1])}; floor {floor:g} tokens per activated parameter")
        if flagged:
            console.print(f"[red]{len(flagged)} run(s) flagged:[/]")
            for p, c in flagged:
                console.print(f"[red]  {p.run_id}: {', '.join(c.flags)}[/]")


def _flagged(text: str, check: RunCheck | None, what: str) -> str:
    bad = check is not None and any(f.startswith(what) or f.endswith(what) for f in check.flags)
    return f"[red]{text}[/]" if bad else text


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
