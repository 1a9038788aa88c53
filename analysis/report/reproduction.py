"""The report's "Reproduction" section (``moelab demo``): fresh runs beside their committed ladder twins.

A fresh run's twin is the committed run with the same content hash (the ``<hash>`` of ``<slug>-<hash>``,
:func:`moelab.sweep.runid.hash_of`): the same semantic config and seed, hence the same data order and initial
weights. What may differ between the two is the machine and library versions that did the arithmetic, and the
corpus when the default corpus (the running Python's standard library) comes from another Python; the table
says whether the corpus fingerprints agree.

The tolerance is the seed noise measured on the committed ladder: the pooled standard deviation of the final
held-out loss over runs whose configs differ only in ``train.seed`` (the ladder's second seeds). A fresh run
reproduces its twin when ``|fresh - committed| <= 2 SD``. With no such runs committed there is no verdict, and
the section says so.

The fits of the rest of the report use the committed ladder's runs when there are any (:func:`report_data`):
a fresh run never enters a fit beside its committed twin, and a fresh run without a twin is listed here, not
fitted, since nothing says it shares the ladder's recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.report import figures as F
from analysis.report.data import ResultsData, _run_dir, load_results
from analysis.report.render import Section
from moelab.errors import MoelabError
from moelab.sweep.runid import hash_of
from moelab.sweep.state import read_json
from moelab.train.identity import BASELINE, run_hash, upgrade

__all__ = [
    "TOLERANCE_SD",
    "Reproduction",
    "SeedNoise",
    "compare",
    "load_committed",
    "reproduction_section",
    "report_data",
    "seed_key",
    "seed_noise",
]

TOLERANCE_SD = 2.0  # a fresh run reproduces its twin within this many seed standard deviations


@dataclass
class SeedNoise:
    """The pooled SD over seeds of the final held-out loss (nats/token), from committed configs with >= 2
    seeds; ``sd`` is None when there are none."""

    sd: float | None = None
    dof: int = 0  # degrees of freedom: sum over configs of (seeds - 1)
    interval: tuple[float, float] | None = None  # 95% chi-square interval of the SD
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per config with >= 2 seeds

    def to_json(self) -> dict:
        return {
            "sd": self.sd,
            "dof": self.dof,
            "interval": None if self.interval is None else list(self.interval),
            "groups": self.groups.to_dict(orient="records"),
        }


@dataclass
class Reproduction:
    fresh: ResultsData = field(repr=False)
    committed: ResultsData | None = field(repr=False)
    n_committed: int  # committed runs with a finite held-out loss
    rows: pd.DataFrame  # one row per fresh run (see compare)
    noise: SeedNoise
    sentence: str  # the overall verdict, one sentence
    fits_on: str  # "committed" or "fresh": whose runs the report's fits use

    @property
    def line(self) -> str:
        """The demo's one-line summary."""
        return f"reproduction: {self.sentence}"

    def to_json(self) -> dict:
        return {
            "committed": None if self.committed is None else str(self.committed.root),
            "fresh": str(self.fresh.root),
            "n_committed": self.n_committed,
            "tolerance_sd": TOLERANCE_SD,
            "seed_noise": self.noise.to_json(),
            "runs": self.rows.to_dict(orient="records"),
            "sentence": self.sentence,
            "fits_on": self.fits_on,
        }


def seed_key(config: dict) -> str:
    """The run hash of ``config`` with its seed set to the baseline: equal for runs that differ only in seed
    (and equal to the seed-0 run's own hash)."""
    cfg = upgrade(config)
    cfg["train"] = {**cfg.get("train", {}), "seed": BASELINE["train"]["seed"]}
    return run_hash(cfg)


def _finite(v) -> bool:
    return v is not None and pd.notna(v) and math.isfinite(float(v))


def seed_noise(data: ResultsData | None) -> SeedNoise:
    """Pooled SD over seeds: ``sqrt(sum_g sum_i (x_gi - mean_g)^2 / sum_g (n_g - 1))`` over the configs ``g``
    of ``data`` with two or more seeds (configs read from each run's config.json)."""
    if data is None or data.ok.empty:
        return SeedNoise()
    members: dict[str, list[tuple[int, pd.Series]]] = {}
    for _, row in data.ok.iterrows():
        config = read_json(_run_dir(data.root, row) / "config.json")
        if config is not None and "train" in config:
            seed = int(upgrade(config)["train"]["seed"])
            members.setdefault(seed_key(config), []).append((seed, row))
    groups, ss, dof = [], 0.0, 0
    for pairs in members.values():
        if len({seed for seed, _ in pairs}) < 2:
            continue
        rows = [r for _, r in pairs]
        losses = np.array([float(r["loss"]) for r in rows])
        ss += float(((losses - losses.mean()) ** 2).sum())
        dof += len(losses) - 1
        groups.append(
            {
                "config": F.run_label(rows[0]),
                "seeds": ", ".join(str(seed) for seed, _ in pairs),
                "losses": ", ".join(f"{v:.4f}" for v in losses),
                "SD": float(losses.std(ddof=1)),
                "runs": ", ".join(str(r["run_id"]) for r in rows),
            }
        )
    if not dof:
        return SeedNoise()
    sd = math.sqrt(ss / dof)
    lo = sd * math.sqrt(dof / stats.chi2.ppf(0.975, dof))
    hi = sd * math.sqrt(dof / stats.chi2.ppf(0.025, dof))
    return SeedNoise(sd=sd, dof=dof, interval=(lo, hi), groups=pd.DataFrame(groups))


def load_committed(root: str | Path) -> ResultsData | None:
    """The committed ladder at ``root`` (a results folder), or None when it holds no runs yet (no
    runs.parquet, or an empty one)."""
    root = Path(root)
    table = root / "runs.parquet"
    if not table.is_file():
        return None
    try:
        empty = pd.read_parquet(table, columns=["run_id"]).empty
    except Exception as exc:  # a corrupt table is the user's file, not our bug (as load_results says)
        raise MoelabError(
            f"committed ladder {root}: cannot read runs.parquet ({type(exc).__name__}: {exc})"
        ) from exc
    return None if empty else load_results(root)


def _committed_runs(committed: ResultsData | None) -> pd.DataFrame:
    if committed is None:
        return pd.DataFrame(columns=["run_id", "loss", "status"])
    return committed.runs


def compare(
    fresh: ResultsData,
    committed: ResultsData | None,
    fresh_ids: list[str] | None = None,
    committed_at: str | Path | None = None,
) -> Reproduction:
    """Every fresh run beside its committed twin (matched by content hash), with the verdict of each and one
    sentence for all. ``fresh_ids``: the run ids the demo's sweep asked for (default: every run of ``fresh``;
    other runs in the folder, from an earlier demo sweep, are left out); ``committed_at``: where the committed
    ladder was looked for (named in the sentence when nothing is there)."""
    if fresh_ids is not None:
        fresh = _only(fresh, {hash_of(r) for r in fresh_ids})
    noise = seed_noise(committed)
    twins = {hash_of(str(row["run_id"])): row for _, row in _committed_runs(committed).iterrows()}
    order = [c for c in ("flops", "active_params", "n_experts") if c in fresh.runs]
    rows = []
    for _, f in fresh.runs.sort_values(order).iterrows():
        twin = twins.get(hash_of(str(f["run_id"])))
        row = {
            "run": str(f["run_id"]),
            "committed run": None,
            "config": F.run_label(f),
            "fresh loss": float(f["loss"]) if _finite(f["loss"]) else None,
            "committed loss": None,
            "difference": None,
            "difference / seed SD": None,
            "same corpus": None,
            "committed commit": None,
            "fresh commit": _short_commit(f.get("git_commit")),
        }
        if twin is None:
            verdict = "no committed twin (not in the fits)"
        else:
            row["committed run"] = str(twin["run_id"])
            row["committed loss"] = float(twin["loss"]) if _finite(twin["loss"]) else None
            row["committed commit"] = _short_commit(twin.get("git_commit"))
            a, b = f.get("corpus_fingerprint"), twin.get("corpus_fingerprint")
            row["same corpus"] = None if not (isinstance(a, str) and isinstance(b, str)) else a == b
            if f["status"] != "succeeded" or row["fresh loss"] is None:
                verdict = f"fresh run {f['status']}: nothing to compare"
            elif row["committed loss"] is None:
                verdict = "committed twin has no held-out loss"
            else:
                diff = row["fresh loss"] - row["committed loss"]
                row["difference"] = diff
                if noise.sd is None:
                    verdict = "no seed noise measured yet: no verdict"
                else:
                    row["difference / seed SD"] = diff / noise.sd
                    ok = abs(diff) <= TOLERANCE_SD * noise.sd
                    verdict = (
                        f"reproduced (within {TOLERANCE_SD:g} seed SDs)"
                        if ok
                        else f"not reproduced (beyond {TOLERANCE_SD:g} seed SDs)"
                    )
        row["verdict"] = verdict
        rows.append(row)
    table = pd.DataFrame(rows)
    n_committed = 0 if committed is None else len(committed.ok)
    rep = Reproduction(
        fresh=fresh,
        committed=committed,
        n_committed=n_committed,
        rows=table,
        noise=noise,
        sentence="",
        fits_on="committed" if n_committed else "fresh",
    )
    rep.sentence = _sentence(rep, committed_at)
    return rep


def _only(data: ResultsData, hashes: set) -> ResultsData:
    runs = data.runs[[hash_of(str(r)) in hashes for r in data.runs["run_id"]]].reset_index(drop=True)
    keep = set(runs["run_id"])
    return ResultsData(
        root=data.root,
        runs=runs,
        curves={k: v for k, v in data.curves.items() if k in keep},
        expert_load={k: v for k, v in data.expert_load.items() if k in keep},
        provenance=data.provenance,
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _short_commit(v) -> str | None:
    return str(v)[:10] if isinstance(v, str) and v else None


def _sentence(rep: Reproduction, committed_at: str | Path | None) -> str:
    t = rep.rows
    n = len(t)
    at = rep.committed.root if rep.committed is not None else committed_at
    where = "" if at is None else f" ({at})"
    if not rep.n_committed:
        return (
            f"nothing to compare yet: the committed ladder{where} holds no finished runs; the fits use this "
            f"demo's {n} fresh runs"
        )
    twinned = t[t["committed loss"].notna()] if n else t
    compared = twinned[twinned["difference"].notna()] if n else t
    if compared.empty:
        return (
            f"nothing to compare yet: none of the {n} fresh runs has a finished twin among the "
            f"{rep.n_committed} committed ladder runs; the fits use the committed runs"
        )
    worst = float(compared["difference"].abs().max())
    if rep.noise.sd is None:
        return (
            f"{len(compared)} of {n} fresh runs have committed twins (largest |difference| {worst:.4f} "
            "nats/token), but the committed ladder has no runs that differ only in seed yet, so there is "
            "no seed noise to judge them by: no verdict"
        )
    sd = rep.noise.sd
    good = compared["difference"].abs() <= TOLERANCE_SD * sd
    configs = _n(len(rep.noise.groups), "committed config")
    base = (
        f"{int(good.sum())} of {len(compared)} fresh runs reproduce their committed twins within "
        f"{TOLERANCE_SD:g} seed SDs (seed SD {sd:.4f} nats/token from {configs} with 2+ seeds; largest "
        f"|difference| {worst:.4f})"
    )
    if good.all():
        return base
    bad = compared[~good]
    return (
        base
        + "; not reproduced: "
        + ", ".join(f"{r['config']} ({r['difference / seed SD']:+.1f} SD)" for _, r in bad.iterrows())
    )


def report_data(rep: Reproduction) -> ResultsData:
    """What the rest of the report draws and fits: the committed ladder when it has finished runs (a fresh run
    is never counted beside its twin), else the fresh runs."""
    return rep.committed if rep.fits_on == "committed" else rep.fresh


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    return format(v, spec)


def _figure(rep: Reproduction):
    """Left: final held-out loss against compute, the committed ladder as dots and the fresh runs as rings;
    right: held-out loss during training of each twin pair (committed solid, fresh dashed)."""
    fresh, committed = rep.fresh, rep.committed
    if committed is None or committed.ok.empty or fresh.ok.empty or "flops" not in committed.ok:
        return None
    plt = F._plt()
    pairs = rep.rows[rep.rows["difference"].notna()]
    curves = [
        (f, c)
        for f, c in zip(pairs["run"], pairs["committed run"], strict=True)
        if _evals(fresh, f) is not None and _evals(committed, c) is not None
    ]
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(10.5 if curves else 5.6, 4.0), squeeze=False)
    ax = axes[0][0]
    ok = committed.ok
    colors = F._expert_colors(list(ok["n_experts"]) + list(fresh.ok["n_experts"]))
    for e, g in ok.groupby("n_experts"):
        ax.scatter(
            g["flops"], g["loss"], s=18, color=colors[int(e)], label=f"committed, E={int(e)}", zorder=2
        )
    twinned = set(rep.rows.loc[rep.rows["committed loss"].notna(), "run"])
    fr = fresh.ok
    tw = fr[fr["run_id"].isin(twinned)]
    lone = fr[~fr["run_id"].isin(twinned)]
    if len(tw):
        ax.scatter(tw["flops"], tw["loss"], s=90, facecolor="none", edgecolor="crimson", linewidths=1.3,
                   label="fresh (has a committed twin)", zorder=4)  # fmt: skip
    if len(lone):
        ax.scatter(lone["flops"], lone["loss"], s=40, marker="x", color="0.35",
                   label="fresh, no committed twin", zorder=3)  # fmt: skip
    ax.set_xscale("log")
    F._no_minor_labels(ax.xaxis)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("final held-out loss (nats/token)")
    ax.set_title("Fresh runs on the committed ladder")
    ax.legend(loc="best", fontsize=7.5)
    if curves:
        ax = axes[0][1]
        cmap = plt.get_cmap("tab10")
        label_of = dict(zip(rep.rows["run"], rep.rows["config"], strict=True))
        for i, (f, c) in enumerate(curves):
            col = cmap(i % 10)
            cc, fc = _evals(committed, c), _evals(fresh, f)
            ax.plot(cc["tokens"], cc["eval_loss"], "-", color=col, lw=1.4, label=label_of[f])
            ax.plot(fc["tokens"], fc["eval_loss"], "--", color=col, lw=1.4, marker="o", ms=6, mfc="none")
        ax.set_xscale("log")
        F._no_minor_labels(ax.xaxis)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("During training: committed (solid), fresh (dashed, rings)")
        ax.legend(loc="best", fontsize=7.5)
    fig.tight_layout()
    return fig


def _evals(data: ResultsData, run_id: str) -> pd.DataFrame | None:
    c = data.curves.get(run_id)
    if c is None or "eval_loss" not in c or "tokens" not in c:
        return None
    c = c[c["eval_loss"].notna() & c["tokens"].notna()]
    return c if len(c) else None


def reproduction_section(rep: Reproduction) -> Section:
    """The section: the verdict sentence, the per-run table, the seed-noise table and what it rests on."""
    t = rep.rows
    tables = []
    if len(t):
        table = pd.DataFrame(
            {
                "run": t["run"],
                "E, N, D": t["config"],
                "fresh loss": [_fmt(v, ".4f") for v in t["fresh loss"]],
                "committed loss": [_fmt(v, ".4f") for v in t["committed loss"]],
                "difference": [_fmt(v, "+.4f") for v in t["difference"]],
                "difference / seed SD": [_fmt(v, "+.2f") for v in t["difference / seed SD"]],
                "same corpus": [_fmt(v, "") for v in t["same corpus"]],
                "commit (committed / fresh)": (
                    t["committed commit"].fillna("—") + " / " + t["fresh commit"].fillna("—")
                ),
                "verdict": t["verdict"],
            }
        )
        tables.append(("Fresh runs beside their committed twins (held-out loss in nats/token)", table))
    noise = rep.noise
    notes = [
        f"Fresh runs: {len(t)}, trained by this demo into {rep.fresh.root}. Committed ladder: "
        + (
            f"{rep.n_committed} finished runs in {rep.committed.root}."
            if rep.committed is not None
            else "none found."
        )
    ]
    if noise.sd is None:
        notes.append(
            "Seed noise: not measured yet. It needs committed runs whose configs differ only in the seed "
            "(the ladder's second seeds, sweeps/ladder_seed1.yaml); none are committed, so no difference "
            "can be called within or beyond seed noise."
        )
    else:
        lo, hi = noise.interval
        notes.append(
            f"Seed noise: SD {noise.sd:.4f} nats/token (95% interval [{lo:.4f}, {hi:.4f}], "
            f"{_n(noise.dof, 'degree')} of freedom), pooled over {_n(len(noise.groups), 'committed config')} "
            "trained with more than one seed (the table above). A fresh run is reproduced when "
            f"|fresh - committed| <= {TOLERANCE_SD:g} SD; the SD is measured at those configs and applied to "
            "every fresh run."
        )
        tables.append(("Seed noise: committed configs with more than one seed", _noise_table(noise.groups)))
    notes.append(
        "Fits: the other sections fit and draw "
        + (
            "the committed ladder's runs only; fresh runs appear in this section, never beside their "
            "twins in a fit."
            if rep.fits_on == "committed"
            else "this demo's fresh runs, since no ladder run is committed yet."
        )
    )
    if len(t) and (t["same corpus"] == False).any():  # noqa: E712 (None means unknown)
        notes.append(
            "Some fresh runs read a different corpus than their twins (another corpus fingerprint: the "
            "default corpus is the running Python's standard library), so their data differ."
        )
    fig = _figure(rep)
    return Section(
        "reproduction",
        "Reproduction",
        rep.sentence[0].upper() + rep.sentence[1:] + ".",
        figures=[("reproduction", fig)] if fig is not None else [],
        tables=tables,
        notes=notes,
    )


def _noise_table(groups: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "E, N, D": groups["config"],
            "seeds": groups["seeds"],
            "held-out losses": groups["losses"],
            "SD": groups["SD"].map(lambda v: f"{v:.4f}"),
            "runs": groups["runs"],
        }
    )
