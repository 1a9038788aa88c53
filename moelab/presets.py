"""Named model configurations: a CPU ladder (about 1e5 to 1e7 activated parameters, byte vocabulary) and
``hunyuan-large`` (Tencent 2024, arXiv 2411.02265, tab. 1).

``get_preset(name)`` returns a ``ModelConfig``; ``PRESETS`` maps every name to its config. The ladder is the
family rule ``ModelConfig.from_budget`` evaluated at fixed points, so its members are the same models a
sweep over the same budgets trains:

- ``dense-<size>``: n_experts 1 (the baseline);
- ``moe8-<size>``: 8 experts, top-1, granularity 1, no shared expert (classic Switch-style);
- ``hy8-<size>``: 8 routed experts, top-1, one shared expert of the routed experts' width (shared_ratio 0.5,
  granularity 0.5 of the activated width: Hunyuan-Large's shape), recycle routing.

A preset taken from a paper also carries what the paper reports beyond its architecture
(``paper_facts(name)``: training tokens, the paper's compute model and its fitted compute-optimal allocation
law). These facts have this one home; the analysis (extrapolation, report, sweep generators) reads them here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moelab.config import ModelConfig
from moelab.errors import ConfigError

#: Activated non-embedding parameter budgets of the CPU ladder.
LADDER = {"100k": 1e5, "300k": 3e5, "1m": 1e6, "3m": 3e6, "10m": 1e7}

HUNYUAN_LARGE = ModelConfig(
    vocab_size=128512,
    d_model=6400,
    n_layers=64,
    n_heads=80,
    n_kv_heads=8,
    head_dim=80,
    cla_share=2,
    qk_norm=True,
    rope_theta=10000.0,
    max_seq_len=4096,  # pretraining context; the 32K/256K extension (dynamic NTK RoPE) is not modelled
    n_experts=16,
    top_k=1,
    n_shared_experts=1,
    d_expert=18304,
    d_shared=18304,
    capacity_factor=1.25,  # not published; the common default
    dispatch="capacity",
    overflow="recycle",
    renormalize=False,
    tie_embeddings=True,
    norm_eps=1e-5,
    dtype="bfloat16",
    param_dtype="float32",
)


@dataclass(frozen=True)
class PaperFacts:
    """What a preset's paper reports beyond the architecture.

    The compute model is ``C = compute_coef * N * D + compute_per_token * D`` (N activated non-embedding
    parameters, D tokens); the allocation law is ``N_opt = n_opt[0] * C^n_opt[1]``, ``D_opt = d_opt[0] *
    C^d_opt[1]``, fitted by the paper on that compute model over ``fit_compute`` FLOPs.
    """

    source: str
    train_tokens: float
    compute_coef: float
    compute_per_token: float
    n_opt: tuple[float, float]
    d_opt: tuple[float, float]
    fit_compute: tuple[float, float]

    def cost_per_token(self, n_active):
        """Training FLOPs per token of a model with ``n_active`` activated parameters (the paper's model)."""
        return self.compute_coef * np.asarray(n_active, np.float64) + self.compute_per_token

    def compute(self, n_active, tokens):
        """Training compute C of ``n_active`` activated parameters on ``tokens`` tokens (paper's model)."""
        return self.cost_per_token(n_active) * np.asarray(tokens, np.float64)

    def allocation(self, compute) -> tuple[np.ndarray, np.ndarray]:
        """The paper's compute-optimal (N_opt, D_opt) at compute C (in the paper's compute model)."""
        c = np.asarray(compute, np.float64)
        return self.n_opt[0] * c ** self.n_opt[1], self.d_opt[0] * c ** self.d_opt[1]


#: Hunyuan-Large (Tencent 2024, arXiv 2411.02265, sec. 4.1): trained on 7T tokens; compute
#: C = 9.59 N D + 2.3e8 D (N activated non-embedding); N_opt = 5.9e-3 C_min^0.5305 and D_opt = 3.2 C_min^0.50
#: fitted on IsoFLOP budgets of 5e18 to 9.5e19 FLOPs, where C_min = C / (1 + B / B_crit) is the compute at an
#: ideal batch (the paper's C is used as C_min here). The law's optimum is 58.1B / 5.6T (the fixed point of
#: the law under this compute model); they chose 52B / 7T.
HUNYUAN_LARGE_FACTS = PaperFacts(
    source="Tencent 2024, Hunyuan-Large (arXiv 2411.02265), sec. 4.1",
    train_tokens=7.0e12,
    compute_coef=9.59,
    compute_per_token=2.3e8,
    n_opt=(5.9e-3, 0.5305),
    d_opt=(3.2, 0.50),
    fit_compute=(5.0e18, 9.5e19),
)


def _ladder_family() -> dict[str, dict]:
    """The from_budget arguments of each ladder preset (a sweep rebuilding a preset at another budget keeps
    these nominal values rather than the rounded realised ones)."""
    family: dict[str, dict] = {}
    for size, budget in LADDER.items():
        family[f"dense-{size}"] = dict(active_params=budget, n_experts=1)
        family[f"moe8-{size}"] = dict(active_params=budget, n_experts=8, top_k=1)
        # one shared + one routed expert of equal width: Hunyuan-Large's shape
        family[f"hy8-{size}"] = dict(active_params=budget, n_experts=8, shared_ratio=0.5, granularity=0.5)
    return family


#: name -> from_budget arguments, for the presets that are family members.
FAMILY_ARGS: dict[str, dict] = _ladder_family()
_OVERRIDES = {"hy8": {"overflow": "recycle"}}

PRESETS: dict[str, ModelConfig] = {
    **{name: ModelConfig.from_budget(**args, **_OVERRIDES.get(name.split("-")[0], {}))
       for name, args in FAMILY_ARGS.items()},
    "hunyuan-large": HUNYUAN_LARGE,
}  # fmt: skip
PAPER_FACTS: dict[str, PaperFacts] = {"hunyuan-large": HUNYUAN_LARGE_FACTS}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (ConfigError listing the names otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}") from None


def paper_facts(name: str) -> PaperFacts:
    """The paper facts of preset ``name`` (ConfigError naming the presets that have them otherwise)."""
    if name not in PAPER_FACTS:
        get_preset(name)  # an unknown name gets the list of presets
        raise ConfigError(
            f"preset {name!r} has no paper facts (training tokens, compute model, allocation law); "
            f"presets with them: {', '.join(PAPER_FACTS)}"
        )
    return PAPER_FACTS[name]


def published_train_tokens(cfg: ModelConfig) -> float | None:
    """The paper's training tokens of the preset ``cfg`` is (compared by value), None for any other config."""
    for name, facts in PAPER_FACTS.items():
        if PRESETS[name] == cfg:
            return facts.train_tokens
    return None


# ---------------------------------------------------------------------------------------------- routers
#: Router recipes by name: the ModelConfig fields each one sets (moelab/model/router.py); every other field
#: comes from the base model. The ``router`` axis of a sweep takes these names (sweeps/routers.yaml).
ROUTERS: dict[str, dict] = {
    # softmax top-k with the Switch/GShard load-balancing loss: the family's default (Switch, GShard)
    "softmax-aux": {"router_score": "softmax", "router_bias_rate": 0.0, "seq_aux_loss_coef": 0.0,
                    "aux_loss_coef": 0.01, "overflow": "drop"},
    # the same with Hunyuan-Large's recycle routing of overflowing tokens
    "softmax-aux-recycle": {"router_score": "softmax", "router_bias_rate": 0.0, "seq_aux_loss_coef": 0.0,
                            "aux_loss_coef": 0.01, "overflow": "recycle"},
    # sigmoid scores normalised over the chosen experts (DeepSeek-V3's scores) with the Switch loss
    "sigmoid-aux": {"router_score": "sigmoid", "router_bias_rate": 0.0, "seq_aux_loss_coef": 0.0,
                    "aux_loss_coef": 0.01, "overflow": "drop"},
    # DeepSeek-V3: sigmoid scores, auxiliary-loss-free bias (gamma 0.001), sequence-wise loss alpha 1e-4
    "aux-free": {"router_score": "sigmoid", "router_bias_rate": 1e-3, "seq_aux_loss_coef": 1e-4,
                 "aux_loss_coef": 0.0, "overflow": "drop"},
    # expert choice (Zhou et al. 2022): balanced by construction, no balance loss
    "expert-choice": {"dispatch": "expert_choice", "router_score": "softmax", "router_bias_rate": 0.0,
                      "seq_aux_loss_coef": 0.0, "aux_loss_coef": 0.0},
}  # fmt: skip


def router_fields(name: str) -> dict:
    """The ModelConfig fields of router recipe ``name`` (ConfigError listing the names otherwise)."""
    try:
        return dict(ROUTERS[name])
    except KeyError:
        raise ConfigError(f"unknown router {name!r}; allowed: {', '.join(ROUTERS)}") from None


def router_family(model: dict) -> str:
    """The router recipe a model's fields (a ModelConfig dict or a runs-table row) belong to: expert-choice,
    aux-free (``-softmax`` with softmax scores), else ``{score}-aux`` with ``-recycle`` for recycle routing;
    ``dense`` for n_experts 1. Fields a saved config lacks read as ModelConfig's defaults."""
    names = ("router_score", "router_bias_rate", "dispatch", "overflow")
    d = {f: getattr(ModelConfig, f, None) for f in names}
    d.update({k: v for k, v in model.items() if k in d and v is not None and v == v})
    if int(model.get("n_experts", 1)) == 1:
        return "dense"
    if d["dispatch"] == "expert_choice":
        return "expert-choice"
    if float(d["router_bias_rate"]) > 0:
        return "aux-free" if d["router_score"] == "sigmoid" else "aux-free-softmax"
    recycle = "-recycle" if d["overflow"] == "recycle" and d["dispatch"] == "capacity" else ""
    return f"{d['router_score']}-aux{recycle}"
