"""Issue 16's real-runs check of ``moelab suggest`` on the lab's committed ladder:
``python scripts/suggest_replay.py [LADDER] [--level 6e12] [--rung 4] [--seeds 20] [--bootstrap 256]``.

The ladder's E-ladder runs (dense and the top-1 arms without shared experts, seed 0; the filter of
``scripts/ladder_check.py``) are split by compute (``analysis.suggest.replay_split``): the ``--rung`` runs
nearest ``--level`` FLOPs are the grid's next rung, the runs cheaper than all of them are done, and the rest
(the rung included) are the candidates. ``analysis.suggest.replay`` then compares, per seed, the 95% bootstrap
interval of the target (Hunyuan-Large on its training tokens, ``analysis.suggest.Target``'s default, under
``--law``) before and after adding (a) the runs
``moelab suggest``'s design picks, (b) random candidates, (c) the rung, all within the rung's FLOPs, each run
showing the loss it really reached (the design never sees it). Seeds vary the bootstrap resamples and the
random draw; the candidates and their losses are the same in every seed, so the seeds measure how robust the
comparison is to resampling, not a spread over independent ladders.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from ladder_check import _plain  # noqa: E402

from analysis.load import load_runs  # noqa: E402
from analysis.suggest import Target, replay, replay_split  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ladder", nargs="?", default=str(REPO / "data" / "ladder" / "ladder"))
    ap.add_argument("--level", type=float, default=6e12, help="FLOPs of the next rung (default 6e12)")
    ap.add_argument("--rung", type=int, default=4, help="runs in the next rung (default 4)")
    ap.add_argument("--law", default="joint_moe")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=256, help="bootstrap resamples per fit (default 256)")
    args = ap.parse_args(argv)
    df = load_runs(args.ladder)
    df = df[df["status"] == "succeeded"].reset_index(drop=True) if "status" in df else df
    df = _plain(df)
    df = df[df["seed"] == 0].reset_index(drop=True)
    done, pool, rung = replay_split(df, args.level, args.rung)
    target = Target("hunyuan-large")  # its paper's training tokens (moelab.presets)
    print(f"{args.ladder}: {len(done)} runs done, {len(pool)} candidates, next rung {len(rung)} runs "
          f"({', '.join(sorted(rung['run_id'].str.split('-lr').str[0]))}); law {args.law}, target "
          f"{target.label}; {args.seeds} seeds x {args.bootstrap} resamples")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = replay(args.law, done, pool, rung, target, seeds=range(args.seeds),
                     n_boot=args.bootstrap)  # fmt: skip
    print("design (same FLOPs)   median width after / before   runs   suggested narrower in")
    for k in ("suggest", "random", "grid"):
        r = out[f"width_{k}"] / out["width_before"]
        narrower = int((out["width_suggest"] < out[f"width_{k}"]).sum())
        wins = "" if k == "suggest" else f"{narrower} of {len(out)}"
        runs = f"{out[f'runs_{k}'].min()}-{out[f'runs_{k}'].max()}"
        print(f"{k:22s}{np.median(r):10.3f}{'':20s}{runs:>6s}   {wins}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
