"""``moelab fit``: fit scaling laws to a results folder, a bundled dataset or any CSV.

    moelab fit RESULTS_DIR [--law L] [--holdout F] [--bootstrap N] [--extrapolate [PRESET] --tokens D]
               [--compare] [--json]
    moelab fit --dataset NAME [--law L] [--where EXPR] ...            (moelab datasets list)
    moelab fit --csv FILE --col loss=COL --col active_params=COL (--col tokens=COL | --const tokens=X |
               --col flops=COL) [--col n_experts=COL ...] [--where EXPR] [--final-by RUN --step-col STEP]
    moelab fit --csv FILE --n-col COL --loss-col COL (--d-col COL | --c-col COL)     (the short form)

``--col FIELD=COLUMN`` maps a CSV column to a field of the runs schema (every feature a law uses:
analysis.load.SCHEMA_FIELDS); ``--const FIELD=VALUE`` gives a field one value for every run. A compute
column without a token column derives D = C / (6N). ``--where`` keeps the rows that satisfy a filter
(analysis.where: comparisons, in [list], and/or/not; no Python is evaluated), ``--final-by RUN --step-col
STEP`` the last logged row of each run. ``--holdout F`` holds out the top fraction F of runs by compute
(F < 1) or every run with compute >= F (F >= 1). ``--compare`` ranks every law by held-out error and sets
the published coefficient sets (analysis.published) beside them, with the fitted exponents' bootstrap
intervals when ``--bootstrap N``. ``--json`` prints one JSON object with ``law``, ``params``, ``stderr``,
``intervals``, ``n_points`` and, when asked, ``holdout`` and ``extrapolation`` (``compare``,
``published`` and ``exponents`` with ``--compare``).
Top-level imports stay light: JAX is imported only when a fit runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from moelab.errors import MoelabError

LAW_CHOICES = ("chinchilla", "isoflop", "clark", "granularity", "joint_moe", "shared_ratio")


def register(parser: argparse.ArgumentParser) -> None:
    add_input_args(parser)
    parser.add_argument(
        "--law",
        default=None,
        choices=LAW_CHOICES,
        help="law to fit (default: chinchilla, or a --dataset's paper's law)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="all laws by held-out error, published laws beside them"
    )
    parser.add_argument("--laws", metavar="A,B", help="with --compare: the laws to rank (default: all)")
    parser.add_argument(
        "--starts", type=int, metavar="S", help="cap on each law's grid of L-BFGS starts (default: full grid)"
    )
    parser.add_argument(
        "--bootstrap", type=int, default=0, metavar="N", help="bootstrap refits for intervals"
    )
    parser.add_argument(
        "--holdout", type=float, metavar="F", help="hold out top fraction F (<1) or compute >= F"
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=None,
        help="Huber delta on log L (default 1e-3, or the dataset paper's own; 1e3 = least squares)",
    )
    parser.add_argument(
        "--extrapolate", nargs="?", const="hunyuan-large", metavar="PRESET", help="predict a preset's loss"
    )
    parser.add_argument(
        "--tokens", type=float, default=None, help="training tokens (default: the preset's published ones)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_input_args(parser: argparse.ArgumentParser) -> None:
    """The runs to read: RESULTS paths, --dataset, or --csv with its column map and selection (shared with
    ``moelab suggest``); :func:`load_input` reads them."""
    parser.add_argument("results", nargs="*", help="results root, sweep folder(s) or runs.parquet file(s)")
    add_table_options(parser)


def load_input(args):
    """The runs DataFrame of the arguments of :func:`add_input_args`."""
    return load_table(args)[0]


def add_table_options(parser: argparse.ArgumentParser) -> None:
    """Where the runs come from besides a results folder: --dataset, --csv and its column map and selection
    (shared by ``moelab fit``, ``moelab report`` and ``moelab bench laws``)."""
    parser.add_argument("--dataset", metavar="NAME", help="a bundled dataset (moelab datasets list)")
    parser.add_argument("--csv", help="a CSV of runs (.csv or .csv.gz) instead of a results folder")
    parser.add_argument(
        "--col",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="map a CSV column to a runs-schema field (repeatable), e.g. --col n_experts=num_experts",
    )
    parser.add_argument(
        "--const",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a field with one value for every run (repeatable), e.g. --const tokens=1.31e11",
    )
    parser.add_argument(
        "--where",
        metavar="EXPR",
        help="keep rows satisfying EXPR, e.g. \"router_type in ['Dense','S-Base']\"",
    )
    parser.add_argument(
        "--final-by", metavar="COLUMN", help="keep the last logged row of each run named by COLUMN"
    )
    parser.add_argument(
        "--step-col", metavar="COLUMN", help="the step column --final-by takes the largest of"
    )
    parser.add_argument("--n-col", help="short for --col active_params=COL")
    parser.add_argument("--loss-col", help="short for --col loss=COL")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--d-col", help="short for --col tokens=COL")
    tok.add_argument("--c-col", help="short for --col flops=COL (D = C/(6N))")
    parser.add_argument(
        "--drop-highest-loss",
        type=int,
        default=None,
        metavar="K",
        help="drop the K highest losses (a dataset's default: its paper's)",
    )


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise MoelabError(f"{flag} {item!r}: expected FIELD=VALUE")
        if name in out:
            raise MoelabError(f"{flag} {name} given twice")
        out[name] = value
    return out


def table_spec(args) -> dict:
    """The column map, constants and selection of ``--csv`` from the options (one-line errors)."""
    from analysis.load import check_column_map

    cols = _pairs(args.col, "--col")
    consts = _pairs(args.const, "--const")
    for short, field in (
        ("n_col", "active_params"),
        ("loss_col", "loss"),
        ("d_col", "tokens"),
        ("c_col", "flops"),
    ):
        value = getattr(args, short)
        if value is None:
            continue
        if field in cols:
            raise MoelabError(f"--{short.replace('_', '-')} and --col {field}=... both map {field}; give one")
        cols[field] = value
    check_column_map(cols, consts)
    have = set(cols) | set(consts)
    need = [f"--col {f}=COLUMN" for f in ("loss", "active_params") if f not in have]
    if not {"tokens", "flops"} & have:
        need.append("tokens (--col tokens=COLUMN, --const tokens=VALUE or --col flops=COLUMN)")
    if need:
        raise MoelabError(
            f"--csv needs {' and '.join(need)} (short form: --n-col, --loss-col and --d-col or --c-col)"
        )
    return {
        "columns": cols,
        "consts": consts,
        "where": args.where,
        "final_by": args.final_by,
        "step_col": args.step_col,
        "tokens_from_flops": "tokens" not in have,
    }


def load_table(args):
    """(runs, bundled dataset or None) of ``--dataset``, ``--csv`` or the RESULTS paths, with
    ``--drop-highest-loss`` applied."""
    from analysis import datasets
    from analysis.load import load_runs

    sources = [bool(args.dataset), bool(args.csv), bool(args.results)]
    if sum(sources) > 1:
        raise MoelabError("give one of RESULTS paths, --csv FILE or --dataset NAME")
    csv_only = [
        f"--{n.replace('_', '-')}" for n in ("n_col", "loss_col", "d_col", "c_col") if getattr(args, n)
    ]
    csv_only += [f for f, v in (("--col", args.col), ("--const", args.const)) if v]
    csv_only += [f for f, v in (("--final-by", args.final_by), ("--step-col", args.step_col)) if v]
    if csv_only and not args.csv:
        raise MoelabError(f"{csv_only[0]} applies to --csv FILE only")
    ds = None
    if args.dataset:
        ds = datasets.get(args.dataset)
        where = ds.where if args.where is None else args.where
        return ds.load(where=where, drop_highest_loss=args.drop_highest_loss), ds
    if args.csv:
        df = load_runs(args.csv, **table_spec(args))
    elif args.results:
        df = load_runs(args.results, where=args.where)
    else:
        raise MoelabError("give a RESULTS_DIR, --csv FILE or --dataset NAME")
    return datasets.drop_highest(df, args.drop_highest_loss or 0), ds


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def _text(out: dict) -> str:
    how = f", Huber delta {out['delta']:g} on ln L" if "delta" in out else ""
    dom = out.get("domain") or {}
    where = f" ({dom['text']})" if dom.get("rule", "all") != "all" else ""
    lines = [f"law {out['law']}: {out['n_points']} runs{where}{how}"]
    se, iv = out.get("stderr") or {}, out.get("intervals") or {}
    bound = set(out.get("on_bound") or ())
    for k, v in out["params"].items():
        extra = f"  ± {_fmt(se[k])}" if k in se else ""
        extra += f"  [{_fmt(iv[k][0])}, {_fmt(iv[k][1])}]" if k in iv else ""
        extra += "  ON A BOUND of the fit (not an estimate)" if k in bound else ""
        lines.append(f"  {k:>8} = {_fmt(v)}{extra}")
    if "holdout" in out:
        h = out["holdout"]
        civ = h.get("mean_abs_rel_error_interval")
        lines.append(
            f"held out {h['n_held_out']} highest-compute runs per stratum (fit on {h['n_train']}): "
            f"RMSE {h['rmse']:.4g}, mean |rel err| {h['mean_abs_rel_error']:.3%}"
            + (f" [{civ[0]:.3%}, {civ[1]:.3%}]" if civ else "")
            + f", median {h['median_abs_rel_error']:.3%}, max {h['max_abs_rel_error']:.3%}"
        )
        for r in h["runs"]:
            lines.append(
                f"  {r['run_id']:>14}  C={r['compute']:.3g}  observed {r['observed']:.4f}  "
                f"predicted {r['predicted']:.4f}  ({r['rel_error']:+.2%})"
            )
    return "\n".join(lines)


def run(args) -> int:
    from analysis.fit import fit
    from analysis.fitting import DELTA
    from analysis.validate import holdout

    caught: list[str] = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        df, ds = load_table(args)
        delta = args.delta if args.delta is not None else (ds.delta if ds is not None else DELTA)
        args.law = args.law or (ds.law if ds is not None else "chinchilla")
        if not delta > 0:
            raise MoelabError(f"--delta must be > 0, got {args.delta}")
        if args.starts is not None and args.starts < 1:
            raise MoelabError(f"--starts {args.starts}: must be an integer >= 1")
        if args.compare:
            out, text = _compare(df, args, delta)
        else:
            if args.holdout is not None:
                if args.law == "isoflop":
                    raise MoelabError("--holdout is not available for --law isoflop")
                kw = _holdout_kw(args.holdout)
                opts = {"bootstrap": args.bootstrap, "seed": args.seed, "max_starts": args.starts}
                res = holdout(df, args.law, delta=delta, **opts, **kw)
            elif args.law == "isoflop":
                res = fit(df, args.law, bootstrap=args.bootstrap, seed=args.seed)
            else:
                opts = {"bootstrap": args.bootstrap, "seed": args.seed, "max_starts": args.starts}
                res = fit(df, args.law, delta=delta, **opts)
            out = res.to_dict()
            if args.law != "isoflop":
                out["delta"] = delta
            text = _text(out)
            if args.extrapolate:
                if args.law == "isoflop":
                    raise MoelabError("--extrapolate needs a parametric law, not isoflop")
                from analysis.extrapolate import extrapolate, format_extrapolation

                ex = extrapolate(res, args.extrapolate, args.tokens)
                out["extrapolation"] = ex
                text += "\n" + format_extrapolation(ex)
    for w in rec:
        caught.append(str(w.message).splitlines()[0])
    for msg in dict.fromkeys(caught):
        print(f"moelab: warning: {msg}", file=sys.stderr)
    print(json.dumps(out, default=_json_default) if args.json else text)
    return 0


def _holdout_kw(h: float) -> dict:
    if not h > 0:
        raise MoelabError(f"--holdout must be a fraction in (0, 1) or a compute threshold >= 1, got {h}")
    return {"fraction": h} if h < 1 else {"fraction": None, "threshold": h}


def _count(v) -> str:
    return "—" if v != v else str(int(v))  # NaN for published rows (nothing trained)


def _split_text(kw: dict) -> str:
    if kw.get("threshold") is not None:
        return f"every run with compute >= {kw['threshold']:.3g}"
    return f"the top {kw['fraction']:.0%} of each stratum's runs (dense, MoE) by compute"


def _compare(df, args, delta: float) -> tuple[dict, str]:
    """``--compare``: every law fitted on the same split and ranked by held-out error
    (:func:`analysis.validate.rank_laws`, the same ranking as ``moelab report``), the published sets
    evaluated on the same held-out runs, and the exponents side by side."""
    import pandas as pd

    from analysis.compare import exponent_rows, exponent_table, published_rows
    from analysis.validate import DEFAULT_LAWS, default_split, rank_laws, ranking_rows

    kw = _holdout_kw(args.holdout) if args.holdout is not None else default_split(df)
    laws = DEFAULT_LAWS if args.laws is None else [x.strip() for x in args.laws.split(",")]
    opts = {"delta": delta, "bootstrap": args.bootstrap, "seed": args.seed, "max_starts": args.starts}
    ranking = rank_laws(df, laws, **opts, **kw)
    test = ranking.heldout_rows(df)
    pub = pd.DataFrame(published_rows(df, test))
    exps = exponent_rows(ranking.results)
    out = ranking.to_dict() | {
        "published": pub.to_dict(orient="records"),
        "exponents": exps,
        "holdout": {k: v for k, v in kw.items() if v is not None},
        "delta": delta,
    }
    done = pub[pub["skipped"].isna()] if "skipped" in pub else pub
    rows = (
        pd.DataFrame(
            {
                "law": done["law"],
                "fit": done["fit"],
                "held out": done["n_held_out"].map(_count),
                "held-out RMSE": done["held_out_rmse"].map(lambda v: f"{v:.4g}"),
                "mean |rel err|": done["held_out_mean_abs_rel_error"].map(lambda v: f"{v:.3%}"),
            }
        )
        if len(done)
        else pd.DataFrame()
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        text = f"held out: {_split_text(kw)} ({len(ranking.heldout_ids)} runs)\n"
        text += ranking_rows(ranking).to_string(index=False)
        text += f"\nbest law ({ranking.basis}): {ranking.best}" if ranking.best else "\nbest law: none ranked"
        for note in ranking.notes:
            text += f"\n  {note}"
        if len(rows):
            text += "\n\npublished sets on the same held-out runs (not fitted)\n" + rows.to_string(
                index=False
            )
        for _, r in (pub[pub["skipped"].notna()] if "skipped" in pub else pub.iloc[:0]).iterrows():
            text += f"\n  not evaluated: {r['law']} ({r['fit']}): {r['skipped']}"
        if exps:
            note = "" if args.bootstrap else " (intervals: add --bootstrap N)"
            text += f"\n\nexponents, fitted on the training split{note}, beside the published sets\n"
            text += exponent_table(exps).to_string(index=False)
    return out, text


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
