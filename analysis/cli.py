"""``moelab fit``: fit scaling laws to a results folder or a CSV.

    moelab fit RESULTS_DIR [--law L] [--holdout F] [--bootstrap N] [--extrapolate [PRESET] --tokens D]
               [--compare] [--json]
    moelab fit --csv FILE --law chinchilla --n-col COL --loss-col COL (--d-col COL | --c-col COL)
               [--drop-highest-loss K] [--bootstrap N] [--json]

``--c-col`` gives training compute C and derives D = C / (6N). ``--holdout F`` holds out the top fraction F of
runs by compute (F < 1) or every run with compute >= F (F >= 1). ``--json`` prints one JSON object with
``law``, ``params``, ``stderr``, ``intervals``, ``n_points`` and, when asked, ``holdout`` and
``extrapolation``.
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
        "--law", default="chinchilla", choices=LAW_CHOICES, help="law to fit (default chinchilla)"
    )
    parser.add_argument("--compare", action="store_true", help="compare all laws by held-out error")
    parser.add_argument(
        "--bootstrap", type=int, default=0, metavar="N", help="bootstrap refits for intervals"
    )
    parser.add_argument(
        "--holdout", type=float, metavar="F", help="hold out top fraction F (<1) or compute >= F"
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
    """The runs to read: RESULTS paths or --csv with its column map (shared with ``moelab suggest``)."""
    parser.add_argument("results", nargs="*", help="results root, sweep folder(s) or runs.parquet file(s)")
    parser.add_argument("--csv", help="a CSV of runs instead of a results folder (needs --n-col, --loss-col)")
    parser.add_argument("--n-col", help="CSV column of (activated) parameters N")
    parser.add_argument("--loss-col", help="CSV column of the loss")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--d-col", help="CSV column of training tokens D")
    tok.add_argument("--c-col", help="CSV column of training compute C (D = C/(6N))")
    parser.add_argument(
        "--drop-highest-loss", type=int, default=0, metavar="K", help="drop the K highest losses"
    )


def load_input(args):
    """The runs DataFrame of the arguments of :func:`add_input_args`."""
    from analysis.load import load_runs

    if args.csv:
        if args.results:
            raise MoelabError("give either RESULTS paths or --csv FILE, not both")
        if not args.n_col or not args.loss_col or not (args.d_col or args.c_col):
            raise MoelabError("--csv needs --n-col, --loss-col and one of --d-col or --c-col")
        cols = {"active_params": args.n_col, "loss": args.loss_col}
        cols["tokens" if args.d_col else "flops"] = args.d_col or args.c_col
        df = load_runs(args.csv, columns=cols, tokens_from_flops=bool(args.c_col))
    else:
        if not args.results:
            raise MoelabError("give a RESULTS_DIR (or --csv FILE)")
        df = load_runs(args.results)
    k = args.drop_highest_loss
    if k < 0 or k >= len(df):
        raise MoelabError(f"--drop-highest-loss must be in [0, {len(df) - 1}], got {k}")
    if k:
        df = df.sort_values("loss", na_position="first").iloc[:-k]
    return df


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def _text(out: dict) -> str:
    lines = [f"law {out['law']}: {out['n_points']} runs"]
    se, iv = out.get("stderr") or {}, out.get("intervals") or {}
    for k, v in out["params"].items():
        extra = f"  ± {_fmt(se[k])}" if k in se else ""
        extra += f"  [{_fmt(iv[k][0])}, {_fmt(iv[k][1])}]" if k in iv else ""
        lines.append(f"  {k:>8} = {_fmt(v)}{extra}")
    if "holdout" in out:
        h = out["holdout"]
        lines.append(
            f"held out {h['n_held_out']} highest-compute runs (fit on {h['n_train']}): RMSE {h['rmse']:.4g}, "
            f"mean |rel err| {h['mean_abs_rel_error']:.3%}"
        )
        for r in h["runs"]:
            lines.append(
                f"  {r['run_id']:>14}  C={r['compute']:.3g}  observed {r['observed']:.4f}  "
                f"predicted {r['predicted']:.4f}  ({r['rel_error']:+.2%})"
            )
    return "\n".join(lines)


def run(args) -> int:
    import pandas as pd

    from analysis.fit import fit
    from analysis.validate import compare_laws, holdout

    caught: list[str] = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        df = load_input(args)
        if args.compare:
            frac = args.holdout if args.holdout is not None and args.holdout < 1 else 0.2
            thr = args.holdout if args.holdout is not None and args.holdout >= 1 else None
            table = compare_laws(df, fraction=None if thr else frac, threshold=thr)
            if args.json:
                print(json.dumps({"compare": table.to_dict(orient="records")}, default=_json_default))
            else:
                with pd.option_context("display.width", 160, "display.max_columns", 20):
                    print(table.to_string(index=False))
            return 0
        if args.holdout is not None:
            if args.law == "isoflop":
                raise MoelabError("--holdout is not available for --law isoflop")
            kw = (
                {"fraction": args.holdout}
                if args.holdout < 1
                else {"fraction": None, "threshold": args.holdout}
            )
            res = holdout(df, args.law, bootstrap=args.bootstrap, seed=args.seed, **kw)
        else:
            res = fit(df, args.law, bootstrap=args.bootstrap, seed=args.seed)
        out = res.to_dict()
        ex_text = None
        if args.extrapolate:
            if args.law == "isoflop":
                raise MoelabError("--extrapolate needs a parametric law, not isoflop")
            from analysis.extrapolate import extrapolate, format_extrapolation

            ex = extrapolate(res, args.extrapolate, args.tokens)
            out["extrapolation"] = ex
            ex_text = format_extrapolation(ex)
    for w in rec:
        caught.append(str(w.message).splitlines()[0])
    for msg in dict.fromkeys(caught):
        print(f"moelab: warning: {msg}", file=sys.stderr)
    if args.json:
        print(json.dumps(out, default=_json_default))
    else:
        print(_text(out))
        if ex_text:
            print(ex_text)
    return 0


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
