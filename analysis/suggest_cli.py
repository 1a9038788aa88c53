"""``moelab suggest``: the next runs that most shrink the bootstrap interval of a target prediction per FLOP.

    moelab suggest RESULTS_DIR [--law L] [--preset P] [--tokens D | --flops C] [--k K] [--budget F]
                   [--max-flops F] [--corpus-tokens T] [--base SPEC.yaml] [--values AXIS=V1,V2 ...]
                   [--name NAME] [--out FILE.yaml] [--force] [--no-misfit] [--bootstrap B] [--seed S]
                   [--json]

Top-level imports stay light: JAX is imported only when the fit runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

from analysis.cli import _json_default, add_input_args, load_input
from moelab.errors import MoelabError
from moelab.files import write_text_atomic
from moelab.presets import paper_facts

LAW_CHOICES = ("chinchilla", "clark", "granularity", "joint_moe", "shared_ratio")

METHOD = """\
method: fit the law, refit it to B bootstrap resamples of the runs, and predict with every refit the target's
log-loss t and each candidate run's log-loss (candidates: the family's members on a grid of the law's axes,
built and costed with moelab's accounting exactly as `moelab sweep` builds them; over the FLOP cap, over one
epoch of the corpus, outside the family's valid shapes or already run: excluded). Observing candidate c with
the fit's residual noise s^2 shrinks the variance of t by cov(t, c)^2 / (s^2 + var(c)) under the ensemble's
joint covariance (a Gaussian / ensemble-Kalman update, the c-optimal design criterion of Atkinson, Donev &
Tobias 2007, ch. 10, evaluated from the ensemble rather than a Jacobian). The law's misfit is modelled too
(a model discrepancy, Kennedy & O'Hagan 2001): an error of sd kappa * d in log loss at a run d away from the
nearest done run (features standardised), kappa fitted by maximum likelihood to the held-out residuals of the
done runs' own extrapolation folds; as the fit weighs a misfit run like any other, a pick adds
misfit_c * (cov(t, c) / (s^2 + var(c)))^2 back (the sandwich variance), so far-out runs that would move the
fit rather than pin it are discounted or refused. --no-misfit trusts the law everywhere.

Runs are picked greedily by variance reduction per FLOP until K runs or the --budget is spent (with a budget
the greedy by reduction alone is also tried: Leskovec et al. 2007's cost-benefit greedy), then each greedy set
is improved by Fedorov's (1972) exchange of single runs within the same FLOPs; the lowest variance is kept.
The output is a sweep YAML (generator zip: one explicit list per axis) on the base spec's
model/data/train sections that `moelab sweep run` accepts; the expected interval and the misfit sd of each
pick are printed. On synthetic data with a known law the suggested runs narrow the target's 95% interval more
than the same FLOPs on random candidates or on the next rung of the grid (tests/test_suggest.py); replayed on
Chinchilla's real runs they narrow it more than random runs and about as much as the rung, where without the
misfit term they did not narrow it at all (docs/analysis.md, "Which runs next")."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = METHOD
    add_input_args(parser)
    parser.add_argument("--law", default="chinchilla", choices=LAW_CHOICES, help="law (default chinchilla)")
    parser.add_argument(
        "--preset", default="hunyuan-large", help="target preset (default hunyuan-large); with --flops it "
        "gives the expert configuration of the compute-optimal target"
    )  # fmt: skip
    tgt = parser.add_mutually_exclusive_group()
    tgt.add_argument(
        "--tokens", type=float, help="target: the preset trained on D tokens (default: its paper's tokens)"
    )
    tgt.add_argument("--flops", type=float, help="target: the compute-optimal loss at C FLOPs")
    parser.add_argument("--compute", default="6ND", help="compute model of --flops: 6ND, hunyuan or kappa")
    parser.add_argument("--k", type=int, default=8, help="runs to suggest at most (default 8)")
    parser.add_argument("--budget", type=float, help="total training FLOPs of the suggested runs at most")
    parser.add_argument(
        "--max-flops", type=float, help="FLOP cap per run (default 10x the largest run in the table)"
    )
    parser.add_argument(
        "--corpus-tokens", type=float, help="training tokens in one epoch of the corpus (default: from the "
        "base spec's data section; no limit without one)"
    )  # fmt: skip
    parser.add_argument(
        "--base", help="sweep spec whose model/data/train sections the runs use (default sweeps/SWEEP.yaml "
        "of the results' sweep when it exists)"
    )  # fmt: skip
    parser.add_argument(
        "--values", action="append", default=[], metavar="AXIS=V1,V2",
        help="candidate values of one axis (active_params, n_experts, top_k, shared_ratio, granularity, "
        "tokens); repeatable; the default grid is derived from the runs",
    )  # fmt: skip
    parser.add_argument("--name", help="sweep name of the suggested runs (default SWEEP-next)")
    parser.add_argument("--out", help="YAML file to write (default sweeps/NAME.yaml, or ./NAME.yaml)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument(
        "--no-misfit", action="store_true", help="trust the law everywhere: no discrepancy term (see below)"
    )
    parser.add_argument("--bootstrap", type=int, default=200, metavar="B", help="bootstrap refits (200)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _parse_values(items: list[str]) -> dict[str, list]:
    from analysis.suggest import AXES

    out: dict[str, list] = {}
    for item in items:
        axis, sep, rest = item.partition("=")
        if not sep or axis not in AXES:
            raise MoelabError(f"--values {item!r}: expected AXIS=V1,V2 with AXIS one of {', '.join(AXES)}")
        try:
            vals = [float(v) for v in rest.split(",") if v.strip()]
        except ValueError:
            raise MoelabError(f"--values {item!r}: values must be numbers") from None
        if not vals or not all(math.isfinite(v) and v >= 0 for v in vals):
            raise MoelabError(f"--values {item!r}: give one or more finite numbers >= 0")
        if axis in ("n_experts", "top_k"):
            if any(v != int(v) or v < 1 for v in vals):
                raise MoelabError(f"--values {item!r}: {axis} must be integers >= 1")
            vals = [int(v) for v in vals]
        out[axis] = vals
    return out


def _base(args, df) -> tuple[dict, str | None]:
    """(base spec mapping, its path) from --base or sweeps/SWEEP.yaml of a one-sweep table."""
    import yaml

    path = args.base
    if path is None and "sweep" in df.columns and df["sweep"].nunique() == 1:
        guess = Path("sweeps") / f"{df['sweep'].iloc[0]}.yaml"
        path = str(guess) if guess.is_file() and not args.csv else None
    if path is None:
        return {}, None
    p = Path(path)
    if not p.is_file():
        raise MoelabError(f"--base {path}: no such file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise MoelabError(f"--base {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise MoelabError(f"--base {path}: a sweep spec must be a mapping")
    return raw, str(p)


def _corpus_tokens(args, base: dict) -> float:
    if args.corpus_tokens is not None:
        if not args.corpus_tokens > 0:
            raise MoelabError(f"--corpus-tokens must be > 0, got {args.corpus_tokens}")
        return float(args.corpus_tokens)
    if not base:
        return math.inf
    from moelab.config import ModelConfig
    from moelab.data import prepare
    from moelab.presets import get_preset
    from moelab.train.config import DataConfig

    model = base.get("model") or {}
    vocab = model.get("vocab_size") or (
        get_preset(str(model["preset"])).vocab_size if "preset" in model else ModelConfig().vocab_size
    )
    data = DataConfig.from_dict(base.get("data") or {})
    ds = prepare(
        data.corpus, fmt=data.format, field=data.field, tokenizer=data.tokenizer, vocab_size=int(vocab),
        val_fraction=data.val_fraction, hf_split=data.hf_split, hf_config=data.hf_config,
    )  # fmt: skip
    return float(ds.store.meta["splits"]["train"]["tokens"])


def _check_args(args) -> None:
    if args.k < 1:
        raise MoelabError(f"--k must be an integer >= 1, got {args.k}")
    if args.bootstrap < 20:
        raise MoelabError(f"--bootstrap must be >= 20 (a covariance needs an ensemble), got {args.bootstrap}")
    for name in ("budget", "max_flops", "tokens", "flops"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise MoelabError(f"--{name.replace('_', '-')} must be a number > 0, got {v}")


def _compute(text: str):
    if text in ("6ND", "hunyuan"):
        return text
    try:
        v = float(text)
    except ValueError:
        raise MoelabError(f"--compute must be 6ND, hunyuan or a number kappa, got {text!r}") from None
    if not v > 0:
        raise MoelabError(f"--compute kappa must be > 0, got {text!r}")
    return v


def _write(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise MoelabError(f"--out {path} exists; pass --force to overwrite it")
    write_text_atomic(path, text)


def run(args) -> int:
    import numpy as np
    import yaml

    from analysis.fit import fit
    from analysis.laws import get_law
    from analysis.load import compute_of
    from analysis.suggest import Target, build_candidates, default_axes, grid_points, suggest, sweep_dict
    from moelab.sweep.spec import SweepSpec

    _check_args(args)
    values = _parse_values(args.values)
    target = Target(
        preset=args.preset,
        tokens=None if args.flops else (args.tokens or paper_facts(args.preset).train_tokens),
        flops=args.flops,
        compute=_compute(args.compute),
    )
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        df = load_input(args)
        law = get_law(args.law)
        sweep = str(df["sweep"].iloc[0]) if "sweep" in df.columns and df["sweep"].nunique() == 1 else "runs"
        name = args.name or f"{sweep}-next"
        folder = Path("sweeps") if Path("sweeps").is_dir() else Path(".")
        out = Path(args.out) if args.out else folder / f"{name}.yaml"
        if out.exists() and not args.force:
            raise MoelabError(f"--out {out} exists; pass --force to overwrite it")
        base, base_path = _base(args, df)
        max_tokens = _corpus_tokens(args, base)
        max_flops = args.max_flops or 10.0 * float(np.nanmax(compute_of(df)))
        target.check(law)
        axes = {**default_axes(df, law, max_tokens), **values}
        cands = build_candidates(
            grid_points(axes),
            base,
            max_flops=max_flops,
            max_tokens=max_tokens,
            existing=df,
            columns=law.columns,
        )
        if len(cands) == 0:
            excluded = ", ".join(f"{v} {k}" for k, v in cands.excluded.items() if v)
            raise MoelabError(f"no candidate run is left ({excluded}); raise --max-flops or change --values")
        res = fit(df, law, bootstrap=args.bootstrap, seed=args.seed)
        sg = suggest(res, target, cands, k=args.k, budget=args.budget or math.inf, misfit=not args.no_misfit)
    for w in rec:
        caught.append(str(w.message).splitlines()[0])
    for msg in dict.fromkeys(caught):
        print(f"moelab: warning: {msg}", file=sys.stderr)
    if not sg.design.chosen:
        raise MoelabError(
            "no candidate run fits the budget or reduces the target's interval; nothing written"
        )
    desc = (
        f"moelab suggest: {len(sg.design.chosen)} runs for law {sg.law}, target {target.label}; "
        f"{sg.confidence:.0%} interval [{sg.interval[0]:.4g}, {sg.interval[1]:.4g}] of width {sg.width:.4g}, "
        f"expected {sg.expected_widths[-1]:.4g} after these runs ({sg.design.flops:.3g} FLOPs)"
    )
    spec = sweep_dict(sg.candidates.points, base, name, desc)
    SweepSpec.from_dict(spec, source=str(out)).trials()  # the file must plan before it is written
    header = f"# written by moelab suggest from {', '.join(args.results) or args.csv}\n"
    _write(out, header + yaml.safe_dump(spec, sort_keys=False, width=110), args.force)
    if args.json:
        print(json.dumps({**sg.to_dict(), "out": str(out), "base": base_path}, default=_json_default))
        return 0
    excluded = ", ".join(f"{v} {k}" for k, v in sg.excluded.items() if v) or "none"
    after = sg.expected_widths[-1]
    print(f"law {sg.law} on {res.n_points} runs; target: {target.label}")
    print(
        f"  predicted loss {sg.prediction:.4f}, {sg.confidence:.0%} interval [{sg.interval[0]:.4f}, "
        f"{sg.interval[1]:.4f}] (width {sg.width:.4f}, {res.bootstrap.n} bootstrap refits)"
    )
    print(f"  {sg.n_candidates} candidates scored; excluded: {excluded}")
    print(f"  FLOP cap per run {max_flops:.3g}; one epoch {max_tokens:.3g} tokens; base {base_path or '-'}")
    if sg.discrepancy is None:
        print("  misfit: none assumed (--no-misfit)")
    else:
        dsc = sg.discrepancy
        print(
            f"  misfit: sd {math.sqrt(dsc.kappa2):.3g} x distance to the nearest run (log loss; from "
            f"{dsc.n_heldout} held-out residuals in {dsc.n_folds} extrapolation folds, LR {dsc.lr:.2f})"
        )
    print(
        f"  picked by {sg.design.rule}: {len(sg.design.chosen)} runs, {sg.design.flops:.3g} FLOPs, "
        f"expected width {after:.4f} ({after / sg.width - 1:+.0%})"
    )
    table = sg.table()
    cols = ("pick", "n_experts", "active_params", "tokens", "shared_ratio", "granularity", "flops")
    cols += ("misfit_sd", "expected_width")
    print(table[[c for c in cols if c in table]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out}; train them with: moelab sweep run {out}")
    return 0
