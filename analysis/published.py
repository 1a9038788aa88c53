"""Published coefficient sets of the laws in :mod:`analysis.laws`, each with its citation: the one home of
these numbers (../shared/LAWS.md collects them; check the paper before relying on a digit).

Data only, except Hunyuan-Large's allocation law, whose home is its preset (``moelab.presets.paper_facts``):
the set here reads it from there. :mod:`analysis.compare` evaluates a set on runs and sets it beside fitted
laws; :mod:`analysis.laws` takes each law's reference set from here.

A set's ``law`` is a registered law name (its ``params`` use that law's parameter names) or ``"allocation"``
for a compute-optimal allocation law N_opt = n_coef·C^n_exp, D_opt = d_coef·C^d_exp. ``e_hat`` gives the
E_start, E_max of the set's own saturating expert transform where the law uses one (Clark et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moelab.presets import paper_facts

__all__ = ["PUBLISHED", "Published", "for_law", "get_published"]


@dataclass(frozen=True)
class Published:
    key: str
    law: str
    label: str
    params: dict[str, float]
    citation: str
    notes: str = ""
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # published 95% intervals
    e_hat: tuple[float, float] | None = None  # (E_start, E_max) of the set's own Ê


_HY = paper_facts("hunyuan-large")  # its preset holds the paper's facts
_HY_NOTES = "N activated parameters; fitted over {:.2g} to {:.2g} FLOPs with C = {:g} N D + {:.2g} D".format(
    *_HY.fit_compute, _HY.compute_coef, _HY.compute_per_token
)

_SETS = (
    Published(
        key="hoffmann2022",
        law="chinchilla",
        label="Hoffmann et al. 2022 (Chinchilla, Approach 3)",
        params={"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
        citation="Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, arXiv:2203.15556",
        notes="MassiveText; Huber delta 1e-3 on log L, L-BFGS from a grid of starts; C = 6ND",
    ),
    Published(
        key="epoch2024",
        law="chinchilla",
        label="Besiroglu et al. 2024 (Epoch AI replication)",
        params={"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658},
        intervals={
            "E": (1.769, 1.871),
            "A": (285.0, 744.0),
            "B": (1042.0, 5810.0),
            "alpha": (0.317, 0.373),
            "beta": (0.331, 0.415),
        },
        citation="Besiroglu, Erdil, Barnett, You 2024, Chinchilla Scaling: A replication attempt, "
        "arXiv:2404.10102",
        notes="240 points extracted from Hoffmann et al.'s figure 4 (5 highest losses dropped), D = C/(6N); "
        "BFGS on the summed Huber loss (delta 1e-3) of log L; 95% intervals from 4,000 bootstrap resamples",
    ),
    Published(
        key="epoch2024-grid",
        law="chinchilla",
        label="Besiroglu et al. 2024, the 4,500-start grid fit",
        params={"E": 1.8172, "A": 477.84, "B": 2143.86, "alpha": 0.3473, "beta": 0.3672},
        citation="Besiroglu et al. 2024 (arXiv:2404.10102), as collected in ../shared/LAWS.md",
        notes="L-BFGS from Hoffmann et al.'s grid of 4,500 starts on the same 240 points",
    ),
    Published(
        key="krajewski2024",
        law="granularity",
        label="Krajewski et al. 2024 (fine-grained MoE)",
        params={"c": 0.47, "g": 2.1, "gamma": 0.58, "a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147},
        citation="Krajewski et al. 2024, Scaling Laws for Fine-Grained Mixture of Experts, arXiv:2402.07871, "
        "table 1",
        notes="C4; G = dense FFN width / expert width; Huber delta 0.1; validation RMSE 0.019",
    ),
    Published(
        key="krajewski2024-e16",
        law="granularity",
        label="Krajewski et al. 2024, E = 16 fit",
        params={"c": 0.472, "g": 1.18, "gamma": 0.986, "a": 19.64, "alpha": 0.124, "b": 57.07, "beta": 0.169},
        citation="Krajewski et al. 2024, arXiv:2402.07871",
    ),
    Published(
        key="krajewski2024-dense",
        law="chinchilla",
        label="Krajewski et al. 2024, dense fit",
        params={"E": 0.47, "A": 16.3, "B": 26.7, "alpha": 0.126, "beta": 0.127},
        citation="Krajewski et al. 2024, arXiv:2402.07871",
        notes="their dense law c + a/N^alpha + b/D^beta written in Chinchilla's names",
    ),
    Published(
        key="clark2022",
        law="clark",
        label="Clark et al. 2022 (S-BASE)",
        params={"a": -0.082, "b": -0.108, "c": 0.009, "d": 1.104, "E_start": 1.847, "E_max": 314.5},
        citation="Clark et al. 2022, Unified Scaling Laws for Routed Language Models, ICML, arXiv:2202.01169",
        notes="base-10 logs; N = parameters one token sees (dense_parameter_count); final step, routing "
        "frequency 1/2, k = 1; mean squared error of log10 L",
    ),
    Published(
        key="ludziejewski2025",
        law="joint_moe",
        label="Ludziejewski et al. 2025 (joint MoE law, table 3)",
        params={
            "a": 35.91,
            "b": 35.98,
            "c": 1.3637,
            "alpha": -0.1889,
            "beta": -0.1775,
            "delta": -0.2285,
            "gamma": 0.0098,
            "omega": 0.5529,
            "zeta": -0.0259,
        },
        e_hat=(2.0732, 290.4521),
        citation="Ludziejewski et al. 2025, Joint MoE Scaling Laws: Mixture of Experts Can Be Memory "
        "Efficient, arXiv:2502.05172, table 3",
        notes="N_act includes embeddings there; their own E_start 2.0732, E_max 290.45; Huber delta 0.01 on "
        "log L; validation RMSE 0.0039",
    ),
    Published(
        key="hunyuan2024",
        law="allocation",
        label="Hunyuan-Large 2024 (compute-optimal allocation)",
        params=dict(zip(("n_coef", "n_exp", "d_coef", "d_exp"), (*_HY.n_opt, *_HY.d_opt), strict=True)),
        citation=_HY.source,
        notes=_HY_NOTES,
    ),
)

PUBLISHED: dict[str, Published] = {p.key: p for p in _SETS}


def get_published(key: str) -> Published:
    """The published set called ``key``; a KeyError names the known ones."""
    if key not in PUBLISHED:
        raise KeyError(f"unknown published set {key!r}; known: {', '.join(PUBLISHED)}")
    return PUBLISHED[key]


def for_law(law: str) -> list[Published]:
    """The published sets of the law called ``law``."""
    return [p for p in _SETS if p.law == law]
