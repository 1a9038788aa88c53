"""The scaling-law report of a results folder: ``moelab report RESULTS_DIR`` writes RESULTS_DIR/report/ with a
self-contained index.html, report.md, figures/ (PNG and SVG) and fits.json.

    >>> from analysis.report import build_report
    >>> folder, summary = build_report("results/demo")          # doctest: +SKIP

Import is light: matplotlib and the fits are loaded when a report is built.
"""

from __future__ import annotations

__all__ = ["build_report"]


def build_report(results_dir, out=None, **kwargs):
    """See :func:`analysis.report.build.build_report`."""
    # lazy: build imports every section; analysis.report.data (the notebooks' reader) need not
    from analysis.report.build import build_report as _build

    return _build(results_dir, out, **kwargs)
