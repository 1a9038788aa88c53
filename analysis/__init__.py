"""Scaling-law analysis of moelab results: laws, fits, uncertainty, validation, frontier, report."""

from analysis.bootstrap import Bootstrap, bootstrap
from analysis.fit import DELTA, FitResult, FitWarning, fit, fit_arrays, prepare
from analysis.laws import LAWS, Law, get_law
from analysis.load import load_runs, read_csv

__all__ = [
    "DELTA",
    "LAWS",
    "Bootstrap",
    "FitResult",
    "FitWarning",
    "Law",
    "bootstrap",
    "fit",
    "fit_arrays",
    "get_law",
    "load_runs",
    "prepare",
    "read_csv",
]
