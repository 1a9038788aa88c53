"""``moelab report`` of a table of runs (``--dataset``, ``--csv`` with a column map) and its section of
published laws beside the fitted ones."""

from __future__ import annotations

import json
import re

import pytest

from analysis import datasets
from moelab.cli import main


def test_report_of_a_bundled_dataset_sets_published_laws_beside_fitted(tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["report", "--dataset", "clark-routing", "--out", out, "--bootstrap", 8, "--laws", "clark"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert "best law: clark" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    sec = md[md.index("## Published laws beside the fitted ones") :]
    assert "| clark | published: clark2022 |" in sec and "| clark | fitted here |" in sec
    assert re.search(r"\| clark \| c \| [-0-9.e]+ \| \[[-0-9.e]+, [-0-9.e]+\] \| clark2022 0.009 \|", sec)
    fits = json.loads((out / "fits.json").read_text())
    assert "published" in fits["sections"] and fits["n_runs"] == 58
    sets = {s["set"]: s for s in fits["published"]["sets"]}
    assert sets["clark2022"]["all_mean_abs_rel_err"] == pytest.approx(0.00694, abs=5e-5)  # 0.69% (paper fits)
    assert {r["quantity"] for r in fits["published"]["exponents"]} == {"a", "b", "c"}


def test_report_of_a_csv_with_a_column_map(tmp_path, capsys):
    d = datasets.get("epoch-chinchilla")
    out = tmp_path / "rep"
    argv = ["report", "--csv", d.path, "--col", "active_params=Model Size", "--col", "flops=Training FLOP",
            "--col", "loss=loss", "--drop-highest-loss", 5, "--out", out, "--bootstrap", 8, "--starts", 64,
            "--laws", "chinchilla"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    md = (out / "report.md").read_text()
    assert "| chinchilla | published: epoch2024 |" in md
    assert "hunyuan2024 0.5305" in md  # Hunyuan-Large's allocation exponent beside the fitted one
    assert json.loads((out / "fits.json").read_text())["n_runs"] == 240


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["report"], "give a RESULTS_DIR, --csv FILE or --dataset NAME"),
        (["report", "somewhere", "--dataset", "clark-routing"], "give one of RESULTS_DIR, --csv FILE or"),
        (["report", "--dataset", "clark-routing", "--where", "k == "], "--where 'k == ': not an expression"),
    ],
)
def test_report_table_bad_input_is_one_line(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
