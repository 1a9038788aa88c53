"""Scaling-law analysis of moelab results: laws, fits, uncertainty, validation, frontier, report."""

from analysis.bootstrap import bootstrap
from analysis.domain import Domain, law_domain, levels
from analysis.extrapolate import extrapolate, format_extrapolation, paper_allocation
from analysis.fit import fit
from analysis.fitting import DELTA, Bootstrap, FitResult, FitWarning, Holdout, fit_arrays, prepare
from analysis.frontier import (
    best_moe_config,
    chinchilla_closed_form,
    cost_per_token,
    fit_cost,
    fit_kappa,
    frontier,
    optimal_allocation,
)  # fmt: skip
from analysis.isoflop import IsoFlopResult, fit_isoflop, isoflop_minima
from analysis.laws import LAWS, Law, get_law
from analysis.load import load_runs, read_csv
from analysis.validate import Ranking, compare_laws, holdout, rank_laws, split_by_compute

__all__ = [
    "DELTA", "LAWS", "Bootstrap", "Domain", "FitResult", "FitWarning", "Holdout", "IsoFlopResult", "Law",
    "Ranking", "best_moe_config", "bootstrap", "chinchilla_closed_form", "compare_laws", "cost_per_token",
    "extrapolate", "fit", "fit_arrays", "fit_cost", "fit_isoflop", "fit_kappa",
    "format_extrapolation", "frontier", "get_law", "holdout", "isoflop_minima", "law_domain", "levels",
    "load_runs", "optimal_allocation", "paper_allocation", "prepare", "rank_laws", "read_csv",
    "split_by_compute",
]  # fmt: skip
