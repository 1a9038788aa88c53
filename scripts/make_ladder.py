"""Write sweeps/ladder.yaml, sweeps/ladder_seed1.yaml and sweeps/demo.yaml: the lab's reference ladder (issue
12) and the slice of it that `make demo` trains.

    python scripts/make_ladder.py data/ladder/lr_law.json

The learning rate of every run comes from the fitted law ``eta_opt(N, E) = a * N^bN * E^bE`` of the LR search
(sweeps/ladder_lr.yaml -> scripts/ladder_lr_fit.py -> data/ladder/lr_law.json), so the YAML holds explicit
numbers and the ladder is reproducible without rerunning the search. Order is priority: the sweep trains in
this order: dense and E=8 at every size, one token budget at a time from the cheapest (whose column holds the
`make demo` slice), then the other arms.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

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


def spec(name_suffix: str, pts: list[tuple], law: dict, seed: int, header: str, name: str = "ladder") -> str:
    names = ("n_experts", "top_k", "shared_ratio", "granularity", "expert_lr_scale", "active_params",
             "tokens", "lr")  # fmt: skip
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
    demo_header = header + "# `make demo`: a slice of the ladder (each run has a twin in data/ladder).\n"
    demo = spec(" (the make-demo slice)", DEMO, law, 0, demo_header, "demo")
    (REPO / "sweeps" / "demo.yaml").write_text(demo)
    print(f"{len(main_pts)} + {len(SEED1)} runs; {law_text}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "data" / "ladder" / "lr_law.json"))
