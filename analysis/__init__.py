"""Scaling-law analysis of moelab results: laws, fits, uncertainty, validation, frontier, report."""

from analysis import fit as fit_mod
from analysis.bootstrap import Bootstrap, bootstrap
from analysis.extrapolate import extrapolate, format_extrapolation
from analysis.fit import DELTA, FitResult, FitWarning, fit, fit_arrays, prepare
from analysis.frontier import best_moe_config, chinchilla_closed_form, fit_kappa, frontier, optimal_allocation
from analysis.isoflop import IsoFlopResult, fit_isoflop
from analysis.laws import LAWS, Law, get_law
from analysis.load import load_runs, read_csv
from analysis.validate import Holdout, compare_laws, holdout, split_by_compute

__all__ = [
    "DELTA", "LAWS", "Bootstrap", "FitResult", "FitWarning", "Holdout", "IsoFlopResult", "Law",
    "best_moe_config", "bootstrap", "chinchilla_closed_form", "compare_laws", "extrapolate", "fit",
    "fit_arrays", "fit_isoflop", "fit_kappa", "fit_mod", "format_extrapolation", "frontier", "get_law",
    "holdout", "load_runs",
    "optimal_allocation", "prepare", "read_csv", "split_by_compute",
]  # fmt: skip
