"""Write sweeps/ladder.yaml, sweeps/ladder_seed1.yaml, sweeps/ladder_isoflop.yaml and sweeps/demo.yaml: the
lab's reference ladder (issue 12), its IsoFLOP profiles and the slice of it that `make demo` trains.

    python scripts/make_ladder.py data/ladder/lr_law.json

The learning rate of every run comes from the fitted law ``eta_opt(N, E) = a * N^bN * E^bE`` of the LR search
(sweeps/ladder_lr.yaml -> scripts/ladder_lr_fit.py -> data/ladder/lr_law.json), so the YAML holds explicit
numbers and the ladder is reproducible without rerunning the search. Order is priority: the sweep trains in
this order: dense and E=8 at every size, one token budget at a time from the cheapest (whose column holds the
`make demo` slice), then the other arms.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

from moelab.accounting import train_flops_per_token
from moelab.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]

#: Activated non-embedding parameters: 1.3 decades, a factor 2 apart (2.5 at the top); every member has 2 or
#: 3 layers and d_model / n_layers 22..60 (where Kaplan et al. find the aspect ratio does not matter), but for
#: the Hunyuan-shaped arm at 4e4 (16).
SIZES = [4.0e4, 8.0e4, 1.6e5, 3.2e5, 8.0e5]
#: Training tokens: 1,074 to 6,836 steps of 1,024 tokens; 2.4 to 175 tokens per parameter across the ladder
#: (Chinchilla's optimum is about 20), all under one epoch of the 11.5 M training bytes of the corpus.
TOKENS = [1.1e6, 2.8e6, 7.0e6]
MIDDLE = TOKENS[1]
#: name -> (n_experts, top_k, shared_ratio, granularity, expert_lr_scale)
ARMS = {
    "dense": (1, 1, 0.0, 1.0, 1.0),
    "e8": (8, 1, 0.0, 1.0, 1.0),
    "e4": (4, 1, 0.0, 1.0, 1.0),
    "e16": (16, 1, 0.0, 1.0, 1.0),
    "fine16k2": (16, 2, 0.0, 2.0, 1.0),  # fine-grained: experts of half width, top-2
    "hy16": (16, 1, 0.5, 0.5, 1.0),  # Hunyuan-Large's shape: 1 shared + top-1 of 16 routed, equal widths
    # Hunyuan-Large's expert-specific learning rate (sec. 2.2.4): a routed expert sees 1/E of the batch, so
    # its rate is scaled by sqrt(1/E) (here 1/sqrt(8)) while the rest of the model trains at the dense rate;
    # a probe at 3.2e5 on 1.1e6 tokens found it 0.01-0.05 nats better than E=8 at rates 1.4e-3..5.7e-3
    # (single seeds)
    "e8elr": (8, 1, 0.0, 1.0, 0.353553),
}
#: Arms that train at the dense model's rate (Hunyuan's recipe: one rate for the model, the experts' scaled).
LR_AS_DENSE = ("e8elr",)
#: Arms with the whole N x D grid (the joint laws need D to vary for MoE too).
FULL_GRID = ("dense", "e8")
#: The slice `make demo` trains (same runs as the ladder's, so each has a committed twin).
DEMO = [(arm, n, TOKENS[0]) for arm in ("dense", "e8") for n in SIZES[:2]]
#: Second seeds: where the MoE-vs-dense gain and its monotonicity in E are measured, and the demo slice (its
#: reproduction check needs the seed noise of exactly those runs).
SEED1 = DEMO + [(arm, SIZES[-1], MIDDLE) for arm in ("dense", "e4", "e8", "e16")]

#: IsoFLOP profiles (Chinchilla's Approach 2) of dense and E = 8: the N x D grid above has no two runs at
#: one compute, so the budgets below get their own sizes. Each budget's sizes are a factor ISO_FACTOR apart,
#: centred on the size that trains on 20 tokens per parameter (Hoffmann et al.'s ratio), moved as little as
#: needed to keep every run within the ladder's rules: >= ISO_MIN_TOKENS (1,000 steps of 1,024 tokens, with a
#: margin) and <= ISO_MAX_TOKENS (under one epoch of the corpus's 11.6 M training tokens).
ISO_BUDGETS = [2.0e12, 4.0e12, 8.0e12]
ISO_SIZES, ISO_FACTOR = 5, 1.8
ISO_MIN_TOKENS, ISO_MAX_TOKENS = 1.04e6, 1.05e7
ISO_ARMS = ("dense", "e8")
#: The largest size on the most tokens the rules allow (ISO_MAX_TOKENS, under one epoch): a second cell for
#: issue 12's criterion 1. E = 8's gap to dense shrinks by about 0.13 nats per decade of tokens and grows by
#: about 0.06 per decade of size on the first 48 rows (analysis.twins.gap_trend; docs/ladder.md), so at the
#: middle budget the top size cannot show a gain the grid shows at smaller sizes. Decided before these runs.
TOP = [(arm, SIZES[-1], ISO_MAX_TOKENS) for arm in ("dense", "e8", "e4", "e16")]
TOP_SEED1 = TOP[:2]

COMMON = {
    # aux_loss_coef 0.05 (an expert-only field: dense run ids do not see it): at the default 0.01 the LR
    # search's E=8 runs left the idlest expert at 2.7-3.8% of the tokens; at 0.05 every expert of every layer
    # had >= 8.1% (balanced: 12.5%). sweeps/ladder_lr.yaml searched the E=8 rates with it.
    "model": {"vocab_size": 256, "max_seq_len": 128, "dispatch": "auto", "aux_loss_coef": 0.05},
    "data": {"corpus": "default", "tokenizer": "byte"},
    "train": {
        "seq_len": 128,
        "batch_size": 8,
        "schedule": "wsd",
        "warmup_frac": 0.05,
        "anneal_frac": 0.2,
        "beta2": 0.99,
        "eval_tokens": 262144,
        "eval_every": 500,
        "log_every": 50,
        "checkpoint_every": 500,
    },
    "generator": "zip",
    "resources": {"cpus": 1},
    "max_concurrency": 2,
    "order": "listed",  # the ladder grows over sittings: its priorities first, not the longest runs
    "retries": 1,
}


def lr_of(law: dict, n: float, e: int) -> float:
    return float(f"{law['a'] * n ** law['bN'] * e ** law['bE']:.3g}")


def points(law: dict) -> list[tuple]:
    out = []
    for d in (TOKENS[0], MIDDLE, TOKENS[2]):  # cheapest column first (it holds the demo's slice), then middle
        for arm in FULL_GRID:
            out += [(arm, n, d) for n in SIZES]
    for arm in ARMS:
        if arm not in FULL_GRID:
            out += [(arm, n, MIDDLE) for n in SIZES]
    return out


def tokens_at(arm: str, n: float, flops: float) -> float:
    """Tokens a run of ``arm`` at activated size ``n`` trains on to spend ``flops`` (the lab's FLOP count, as
    the sweep's ``flops`` axis derives them)."""
    e, k, r, g, _ = ARMS[arm]
    model = ModelConfig.from_budget(n, n_experts=e, top_k=k, shared_ratio=r, granularity=g,
                                    **COMMON["model"])  # fmt: skip
    return flops / train_flops_per_token(model, COMMON["train"]["seq_len"])


def iso_sizes(arm: str, flops: float) -> list[float]:
    """ISO_SIZES sizes a factor ISO_FACTOR apart around the 20-tokens-per-parameter size at ``flops``, shifted
    into the sizes whose tokens stay within [ISO_MIN_TOKENS, ISO_MAX_TOKENS]; raises if those are too few."""

    def size_where(tokens) -> float:  # tokens(n) - tokens_target(n) falls with n: bisect log n
        lo, hi = math.log(1e3), math.log(1e8)
        for _ in range(60):
            mid = (lo + hi) / 2
            n = math.exp(mid)
            lo, hi = (mid, hi) if tokens_at(arm, n, flops) > tokens(n) else (lo, mid)
        return math.exp(lo)

    n_small, n_big = size_where(lambda n: ISO_MAX_TOKENS), size_where(lambda n: ISO_MIN_TOKENS)
    half = ISO_FACTOR ** ((ISO_SIZES - 1) / 2)
    if n_big / n_small < half**2:
        allowed, need = n_big / n_small, half**2
        raise SystemExit(f"{arm} at {flops:.3g} FLOPs: the sizes allowed span {allowed:.3g}x < {need:.3g}x")
    centre = min(max(size_where(lambda n: 20 * n), n_small * half), n_big / half)
    return [float(f"{centre * ISO_FACTOR ** (i - (ISO_SIZES - 1) / 2):.3g}") for i in range(ISO_SIZES)]


def iso_points() -> list[tuple]:
    return [(arm, n, flops) for flops in ISO_BUDGETS for arm in ISO_ARMS for n in iso_sizes(arm, flops)]


def spec(name_suffix: str, pts: list[tuple], law: dict, seed: int, header: str, name: str = "ladder",
         length: str = "tokens") -> str:  # fmt: skip
    """The sweep YAML of ``pts`` ((arm, N, tokens or FLOPs) each, ``length`` says which) in listed order."""
    names = ("n_experts", "top_k", "shared_ratio", "granularity", "expert_lr_scale", "active_params",
             length, "lr")  # fmt: skip
    axes: dict[str, list] = {k: [] for k in names}
    for arm, n, d in pts:
        e, k, r, g, s = ARMS[arm]
        lr = lr_of(law, n, 1 if arm in LR_AS_DENSE else e)
        for key, value in zip(axes, (e, k, r, g, s, n, d, lr), strict=True):
            axes[key].append(value)
    body = {"name": name, "description": f"the lab's reference ladder{name_suffix}", **COMMON, "axes": axes,
            "seeds": [seed]}  # fmt: skip
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=200)


def main(law_path: str) -> None:
    law = json.loads(Path(law_path).read_text())
    law_text = f"eta_opt(N, E) = {law['a']:.4g} * N^{law['bN']:.3f} * E^{law['bE']:.3f}"
    header = (
        "# Generated by scripts/make_ladder.py from data/ladder/lr_law.json; edit the script.\n"
        "# The lab's reference ladder (issue 12; docs/ladder.md): dense and MoE (E = 4, 8, 16 top-1,\n"
        "# a fine-grained E = 16 top-2, Hunyuan's 1 shared + 16 routed, E = 8 at Hunyuan's expert LR) at 5\n"
        "# activated sizes (4e4..8e5) and 3 token budgets (1.1e6..7e6), byte-level stdlib corpus, dropless\n"
        "# training and evaluation, aux_loss_coef 0.05.\n"
        f"# Learning rates: {law_text} (the LR search's fit; {law.get('source', '')}).\n"
    )
    main_pts = points(law)
    (REPO / "sweeps" / "ladder.yaml").write_text(spec("", main_pts, law, 0, header))
    (REPO / "sweeps" / "ladder_seed1.yaml").write_text(spec(" (second seeds)", SEED1, law, 1, header))
    iso = iso_points()
    iso_header = header + (
        f"# IsoFLOP profiles (Approach 2) of dense and E = 8: {ISO_SIZES} sizes a factor {ISO_FACTOR}\n"
        f"# apart at each of {', '.join(f'{c:.0e}' for c in ISO_BUDGETS)} FLOPs (the lab's count; tokens\n"
        "# derived per run), every run >= 1,000 steps and under one epoch; trains into the ladder's\n"
        "# folder, beside its grid.\n"
    )
    iso_spec = spec(" (IsoFLOP profiles)", iso, law, 0, iso_header, length="flops")
    (REPO / "sweeps" / "ladder_isoflop.yaml").write_text(iso_spec)
    top_header = header + (
        f"# The top cell on more tokens: N = {SIZES[-1]:.0e} on {ISO_MAX_TOKENS:.3g} tokens (< 1 epoch),\n"
        "# dense, E = 8, 4, 16 (seed 0; ladder_top_seed1.yaml: dense and E = 8, seed 1); criterion 1's\n"
        "# second cell (scripts/ladder_check.py). Trains into the ladder's folder.\n"
    )
    top0 = spec(" (top cell, more tokens)", TOP, law, 0, top_header)
    (REPO / "sweeps" / "ladder_top.yaml").write_text(top0)
    top1 = spec(" (top cell, more tokens, second seeds)", TOP_SEED1, law, 1, top_header)
    (REPO / "sweeps" / "ladder_top_seed1.yaml").write_text(top1)
    demo_header = header + "# `make demo`: a slice of the ladder (each run has a twin in data/ladder).\n"
    demo = spec(" (the make-demo slice)", DEMO, law, 0, demo_header, "demo")
    (REPO / "sweeps" / "demo.yaml").write_text(demo)
    print(f"{len(main_pts)} + {len(SEED1)} + {len(iso)} + {len(TOP) + len(TOP_SEED1)} runs; {law_text}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "data" / "ladder" / "lr_law.json"))
