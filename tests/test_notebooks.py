"""Every notebook executes, cell by cell, on a real ipykernel against a small results folder.

The folder is made by a fast real sweep (six tiny MoE models trained on an embedded Ray; see
tests/_report_helpers.py; the synthetic one only with MOELAB_TEST_NOTEBOOKS=synthetic); MOELAB_RESULTS points
the notebooks at it. Notebooks are committed without outputs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from _report_helpers import REPO, notebook_results

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_sweep_overview.ipynb", "02_fit_scaling_laws.ipynb", "03_extrapolate_to_389B.ipynb"]


def _kernel_name(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec that runs this very interpreter (the .venv's python with moelab installed), placed on
    JUPYTER_PATH, so a user-level ``python3`` kernelspec pointing elsewhere cannot shadow it."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "moelab-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "moelab test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv(
        "JUPYTER_PATH",
        os.pathsep.join(filter(None, [str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH")])),
    )
    return "moelab-test"


def test_the_three_notebooks_exist_without_outputs():
    import nbformat

    assert [p.name for p in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), path.name
        assert any("MOELAB_RESULTS" in c.source for c in code[:2]), path.name
        assert any(c.cell_type == "markdown" for c in nb.cells)
        assert any("analysis" in c.source for c in code), path.name


@pytest.fixture(scope="module")
def results_for_notebooks(tmp_path_factory):
    return notebook_results(tmp_path_factory)


@pytest.mark.slow  # the first one pays for the fast real sweep (~40 s idle, minutes on a loaded machine)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, results_for_notebooks, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MOELAB_RESULTS", str(results_for_notebooks))
    monkeypatch.setenv("MOELAB_NOTEBOOK_FAST", "1")  # fewer bootstrap resamples
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=_kernel_name(tmp_path, monkeypatch),
        timeout=240,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any failure
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"
