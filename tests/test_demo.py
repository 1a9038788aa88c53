"""``moelab demo``: sweep -> fits -> report -> path and a three-line summary; a second run only refreshes.

The sweep itself is the sweep package's (tested in its own files and by the real fast sweep of the notebook
fixtures); here a stand-in with the sweep API's signature writes the synthetic results on its first call and,
like the real one, trains nothing on the second, so the demo's own logic runs in seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import moelab.demo as demo
from analysis.report.synthetic import write_synthetic_results
from analysis.validate import HOLDOUT_FRACTION
from moelab.cli import main

FAST = ["--bootstrap", "4", "--starts", "8", "--laws", "granularity"]  # a law the synthetic runs can rank


class FakeSpec:
    name = "demo"

    @classmethod
    def from_file(cls, path):
        assert Path(path).is_file()
        return cls()


def fake_sweep(calls: list):
    def run_sweep(spec, results, *, address=None, num_cpus=None):
        root = Path(results) / spec.name
        first = not (root / "runs.parquet").is_file()
        if first:
            write_synthetic_results(root, sweep=spec.name, small=True)
        calls.append(first)
        n = 13
        return {
            "sweep": spec.name,
            "runs": n,
            "trained": n if first else 0,
            "skipped": 0 if first else n,
            "failed": 0,
            "table": str(root / "runs.parquet"),
        }

    return run_sweep


@pytest.mark.slow  # fits a law (JAX compilation) twice
def test_demo_reports_then_only_refreshes(tmp_path, monkeypatch, capsys):
    calls: list[bool] = []
    monkeypatch.setattr(demo, "_sweep_api", lambda: (FakeSpec, fake_sweep(calls)))
    results = tmp_path / "results"
    assert main(["demo", "--results", str(results), *FAST]) == 0
    out = capsys.readouterr().out.splitlines()
    index = results / "demo" / "report" / "index.html"
    assert out[1] == f"report: {index.resolve()}" and index.is_file()
    assert out[2].startswith("  best law: granularity")
    held = r"  held-out error: [0-9.]+% mean \|relative error\| \(95% \[[0-9.]+%, [0-9.]+%\]\) on \d+ "
    assert re.match(held, out[3])
    assert re.match(r"  extrapolated loss at hunyuan-large: \d+\.\d+ nats/token", out[4])
    first = index.stat().st_mtime_ns
    runs_before = sorted(p.name for p in (results / "demo" / "runs").iterdir())

    assert main(["demo", "--results", str(results), *FAST]) == 0
    out2 = capsys.readouterr().out.splitlines()
    assert calls == [True, False]
    assert "0 trained now, 13 reused" in out2[0]
    assert out2[2:5] == out[2:5]  # same runs, same fits, same summary
    assert index.stat().st_mtime_ns > first  # the report was rewritten
    assert sorted(p.name for p in (results / "demo" / "runs").iterdir()) == runs_before


def test_demo_sweep_file_is_found_from_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: the default still resolves to the repo's sweeps/demo.yaml
    path = demo.find_sweep_file(demo.DEFAULT_SWEEP)
    assert path.is_file() and path.parent.name == "sweeps"


@pytest.mark.parametrize("argv", [["--sweep", "nope.yaml"], ["--bootstrap", "-2"], ["--laws", "bogus"]])
def test_demo_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setattr(demo, "_sweep_api", lambda: pytest.fail("the sweep must not start"))
    assert main(["demo", "--results", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moelab: error: ") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_demo_sweep_supports_the_reports_fits():
    """sweeps/demo.yaml holds what the report's sections need: a full dense N x D grid (>= 4 x 3, for the
    Chinchilla fit), MoE runs with two expert counts at every dense N (the expert-count comparison), held-out
    evaluations during training (the curves), and at least 2 fit points per parameter of the joint law after
    the held-out runs are set aside."""
    from moelab.sweep.spec import SweepSpec

    spec = SweepSpec.from_file(demo.find_sweep_file(demo.DEFAULT_SWEEP))
    pts = {(p["n_experts"], p["active_params"], p["tokens"]) for p in spec.points()}
    assert len(spec.trials()) == len(pts)  # no two points collapse into one run
    dense_n = sorted({n for e, n, _ in pts if e == 1})
    dense_d = sorted({d for e, _, d in pts if e == 1})
    assert len(dense_n) >= 4 and len(dense_d) >= 3
    assert {(1, n, d) for n in dense_n for d in dense_d} <= pts
    experts = sorted({e for e, _, _ in pts if e > 1})
    assert len(experts) >= 2
    for e in experts:
        assert {n for ee, n, _ in pts if ee == e} == set(dense_n)
        assert len({d for ee, _, d in pts if ee == e}) >= 3
    steps = min(t.run.train.tokens // (t.run.train.batch_size * t.run.train.seq_len) for t in spec.trials())
    assert 0 < spec.trials()[0].run.train.eval_every * 2 <= steps  # >= 2 evaluations in the shortest run
    # joint_moe has 9 parameters; the report holds out about HOLDOUT_FRACTION of each stratum
    assert len(pts) - round(HOLDOUT_FRACTION * len(pts)) >= 2 * 9
