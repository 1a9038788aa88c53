"""Public scaling data bundled with moelab, each with its source, license, citation and a built-in column map.

    >>> import analysis.datasets as ds
    >>> ds.names()                                   # ['epoch-chinchilla', 'clark-routing']
    >>> runs = ds.load("clark-routing")              # the runs schema, the paper's own selection
    >>> analysis.fit(runs, "clark", delta=1e3)       # doctest: +SKIP

A dataset is a file shipped unchanged in this folder (``SOURCE.md`` beside it says where it came from) plus
how to read it (:func:`analysis.load.read_csv`): the column map, constants, the paper's selection (a filter in
:mod:`analysis.where`, the final logged step of each run, the highest losses dropped), the law the paper
fitted and its published coefficient set (:mod:`analysis.published`). ``moelab datasets list`` and ``moelab
datasets info NAME`` print the same; ``moelab fit --dataset NAME`` fits it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.load import load_runs
from moelab.errors import MoelabError

__all__ = ["DATASETS", "Dataset", "get", "info_text", "load", "names"]

HERE = Path(__file__).resolve().parent
_DEFAULT = object()


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    file: str  # relative to this folder
    columns: dict[str, str]  # schema field -> CSV column
    citation: str
    source: str
    license: str
    spdx: str  # the license's short identifier
    consts: dict[str, float] = field(default_factory=dict)
    where: str | None = None  # the paper's selection of rows
    final_by: str | None = None
    step_col: str | None = None
    tokens_from_flops: bool = False
    drop_highest_loss: int = 0
    law: str = "chinchilla"  # the law the paper fitted
    published: str | None = None  # key of analysis.published.PUBLISHED
    delta: float = 1e-3  # the paper's loss: Huber delta on log L (a large delta = least squares)
    fixed_tokens: bool = False  # every run trained on the same D: hold out the largest N, not top compute
    notes: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return HERE / self.file

    def load(
        self, *, where: str | None | object = _DEFAULT, drop_highest_loss: int | None = None
    ) -> pd.DataFrame:
        """The runs (schema of :func:`analysis.load_runs`) with the paper's selection; ``where`` and
        ``drop_highest_loss`` replace the dataset's own (``where=None``: every row)."""
        w = self.where if where is _DEFAULT else where
        k = self.drop_highest_loss if drop_highest_loss is None else int(drop_highest_loss)
        df = load_runs(
            self.path,
            columns=self.columns,
            consts=self.consts,
            where=w,
            final_by=self.final_by,
            step_col=self.step_col,
            tokens_from_flops=self.tokens_from_flops,
        )
        df["sweep"] = self.name
        return drop_highest(df, k)


def drop_highest(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """``df`` without its ``k`` highest losses (Besiroglu et al. 2024 drop 5 of the 245 extracted points)."""
    if k < 0 or k >= len(df):
        raise MoelabError(f"--drop-highest-loss must be in [0, {len(df) - 1}], got {k}")
    if not k:
        return df
    return df.sort_values("loss", na_position="first", kind="stable").iloc[:-k].sort_index()


def _clark_selection(router: str) -> str:
    return f"router_type in ['Dense', '{router}'] and k == 1 and routing_frequency == 0.5 and seed == 42"


_CLARK_COLUMNS = {
    "run_id": "hyper_id",
    "active_params": "dense_parameter_count",
    "total_params": "total_parameter_count",
    "n_experts": "num_experts",
    "top_k": "k",
    "loss": "loss_validation",
}
_CLARK_CITATION = "Clark et al. 2022, Unified Scaling Laws for Routed Language Models, ICML, arXiv:2202.01169"
_CLARK_SOURCE = (
    "github.com/google-deepmind/scaling_laws_for_routing data/curves.csv.gz at 42da0c3 (unchanged)"
)
_CLARK_LICENSE = "CC BY 4.0 (data); Copyright 2022 DeepMind Technologies Limited"
_CLARK_TOKENS = (
    "tokens: one value, 1.31e11 (250k steps x 256 x 2048, as this project's issue 14 gives it; the released "
    "file has no token count): laws with a data term cannot be fitted to it"
)

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="epoch-chinchilla",
            title="Chinchilla's 245 Approach-3 runs as extracted by Epoch AI (dense; N, C, loss)",
            file="epoch_chinchilla/svg_extracted_data.csv",
            columns={"active_params": "Model Size", "flops": "Training FLOP", "loss": "loss"},
            tokens_from_flops=True,
            drop_highest_loss=5,
            law="chinchilla",
            published="epoch2024",
            delta=1e-3,
            citation="Besiroglu, Erdil, Barnett, You 2024, Chinchilla Scaling: A replication attempt, "
            "arXiv:2404.10102 (data of Hoffmann et al. 2022, arXiv:2203.15556, figure 4)",
            source="github.com/epoch-research/analyzing-chinchilla data/svg_extracted_data.csv at 9225883 "
            "(unchanged)",
            license="CC BY 4.0 as stated by Epoch AI for its work; the repository has no license file "
            "(SOURCE.md)",
            spdx="CC-BY-4.0",
            notes=(
                "tokens D = C / (6N), as the paper derives them",
                "the paper's selection: the 5 highest losses dropped (240 runs left)",
                "the paper's loss: summed Huber (delta 1e-3) of log L, L-BFGS from Hoffmann et al.'s 4,500 "
                "starts",
            ),
        ),
        Dataset(
            name="clark-routing",
            title="Clark et al. 2022's routed LMs: S-BASE and dense runs, final step (223 runs in the file)",
            file="clark_routing/curves.csv.gz",
            columns=_CLARK_COLUMNS,
            consts={"tokens": 1.31e11},
            where=_clark_selection("S-Base"),
            final_by="hyper_id",
            step_col="step",
            law="clark",
            published="clark2022",
            delta=1e3,
            fixed_tokens=True,
            citation=_CLARK_CITATION,
            source=_CLARK_SOURCE,
            license=_CLARK_LICENSE,
            spdx="CC-BY-4.0",
            notes=(
                "the paper's selection, as in the authors' released notebook (example.ipynb): the final step "
                "of each run, routing frequency 1/2, k = 1, seed 42, S-BASE runs plus the dense runs (E = 1)",
                "the paper's loss: mean squared error of log10 L (here Huber delta 1e3 on ln L: the square), "
                "the best of many restarts",
                "N = dense_parameter_count (parameters one token sees), as the paper's N",
                _CLARK_TOKENS,
                "other routers: the views clark-routing-rlr and clark-routing-hash, or --where",
            ),
        ),
        *(
            Dataset(
                name=f"clark-routing-{router.lower().replace('-', '')}",
                title=f"Clark et al. 2022's routed LMs: {router} and dense runs, final step (same file)",
                file="clark_routing/curves.csv.gz",
                columns=_CLARK_COLUMNS,
                consts={"tokens": 1.31e11},
                where=_clark_selection(router),
                final_by="hyper_id",
                step_col="step",
                law="clark",
                published=None,
                delta=1e3,
                fixed_tokens=True,
                citation=_CLARK_CITATION,
                source=_CLARK_SOURCE,
                license=_CLARK_LICENSE,
                spdx="CC-BY-4.0",
                notes=(
                    f"the selection of clark-routing with {router} in place of S-BASE (the paper fits each "
                    "router on its own); its published coefficients are not among analysis.published",
                    _CLARK_TOKENS,
                ),
            )
            for router in ("RL-R", "Hash")
        ),
    )
}


def names() -> list[str]:
    """The bundled datasets' names."""
    return list(DATASETS)


def get(name: str) -> Dataset:
    """The bundled dataset called ``name`` (one-line error naming the known ones)."""
    if name not in DATASETS:
        raise MoelabError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load(name: str, **kw) -> pd.DataFrame:
    """:meth:`Dataset.load` of the dataset called ``name``."""
    return get(name).load(**kw)


def info_text(name: str) -> str:
    """What ``moelab datasets info NAME`` prints: source, license, citation, column map, selection."""
    d = get(name)
    cols = ", ".join(f"{k}={v}" for k, v in d.columns.items())
    lines = [
        f"{d.name}: {d.title}",
        f"  file        {d.path}",
        f"  source      {d.source}",
        f"  license     {d.license}",
        f"  citation    {d.citation}",
        f"  columns     {cols}",
    ]
    if d.consts:
        lines.append("  constants   " + ", ".join(f"{k}={v:g}" for k, v in d.consts.items()))
    if d.tokens_from_flops:
        lines.append("  tokens      derived: D = C / (6N)")
    if d.where:
        lines.append(f"  where       {d.where}")
    if d.final_by:
        lines.append(f"  final step  last {d.step_col or 'row'} of each {d.final_by}")
    if d.drop_highest_loss:
        lines.append(f"  dropped     the {d.drop_highest_loss} highest losses")
    pub = f"published set '{d.published}' (analysis.published)" if d.published else "no published set here"
    lines.append(f"  paper's law {d.law}, {pub}")
    lines += [f"  note        {n}" for n in d.notes]
    lines.append(f"  provenance  {d.path.parent / 'SOURCE.md'}")
    return "\n".join(lines)
