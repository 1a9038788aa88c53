"""``moelab demo``: a slice of the ladder trained afresh, shown beside the committed ladder, with a verdict.

The sweep itself is the sweep package's (tested in its own files); here the runs of real sweep specs (real
RunConfigs, run ids and config.json) are "trained" by the sweep tests' stand-in trainer, whose loss is a
deterministic function of the config and seed, so the committed ladder, its second seeds and the fresh slice
are made in milliseconds and their differences are known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from _sweep_helpers import fake_training

import moelab.demo as demo
from analysis.report.data import load_results
from analysis.report.reproduction import (
    TOLERANCE_SD,
    compare,
    load_committed,
    report_data,
    reproduction_section,
    seed_key,
)
from moelab.cli import main
from moelab.sweep.runid import hash_of
from moelab.sweep.spec import SweepSpec
from moelab.sweep.store import write_table

FAST = ["--bootstrap", "4", "--starts", "8", "--laws", "chinchilla"]

#: (n_experts, activated N, tokens): a miniature ladder with the family rules of sweeps/ladder.yaml
LADDER = [(e, n, d) for e in (1, 8) for n in (4.0e4, 8.0e4, 1.6e5) for d in (2048, 4096)]
SECOND_SEEDS = [(1, 1.6e5, 4096), (8, 1.6e5, 4096)]
SLICE = [(1, 4.0e4, 2048), (8, 4.0e4, 2048), (1, 8.0e4, 2048), (8, 8.0e4, 2048)]


def spec_file(path: Path, name: str, points, seed: int) -> Path:
    e, n, d = zip(*points, strict=True)
    raw = {
        "name": name,
        "model": {"vocab_size": 256, "max_seq_len": 64},
        "data": {"corpus": "default", "tokenizer": "byte"},
        "train": {"seq_len": 64, "batch_size": 4, "beta2": 0.99, "checkpoint_every": 1000},
        "generator": "zip",
        "axes": {"n_experts": list(e), "active_params": list(n), "tokens": list(d)},
        "seeds": [seed],
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def train(spec: SweepSpec, results: Path) -> Path:
    """What ``moelab sweep run`` leaves: a run folder per trial (the stand-in trainer) and runs.parquet."""
    root = results / spec.name
    for t in spec.trials():
        run_dir = root / "runs" / t.run_id
        if not (run_dir / "summary.json").is_file():
            fake_training(t.run, run_dir)
    write_table(root)
    return root


def set_loss(run_dir: Path, loss: float | None, status: str = "succeeded") -> None:
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "eval_loss": loss, "status": status}))


def committed_ladder(tmp_path: Path, second_seeds=SECOND_SEEDS) -> Path:
    """Seed-0 ladder plus second seeds of a few configs in one folder (both sweeps are named ladder), one
    second seed moved by +0.02 so that the seed groups differ."""
    results = tmp_path / "committed"
    root = train(SweepSpec.from_file(spec_file(tmp_path / "ladder.yaml", "ladder", LADDER, 0)), results)
    if second_seeds:
        seed1 = SweepSpec.from_file(spec_file(tmp_path / "ladder_seed1.yaml", "ladder", second_seeds, 1))
        train(seed1, results)
        first = seed1.trials()[0].run_id
        set_loss(root / "runs" / first, json.loads((root / "runs" / first / "summary.json").read_text())[
            "eval_loss"] + 0.02)  # fmt: skip
        write_table(root)
    return root


def slice_spec(tmp_path: Path, extra=()) -> SweepSpec:
    return SweepSpec.from_file(spec_file(tmp_path / "demo.yaml", "demo", [*SLICE, *extra], 0))


def test_seed_key_ignores_only_the_seed(tmp_path):
    spec = SweepSpec.from_file(spec_file(tmp_path / "a.yaml", "a", SLICE, 0))
    spec1 = SweepSpec.from_file(spec_file(tmp_path / "b.yaml", "b", SLICE, 1))
    keys0 = [seed_key(t.run.to_dict()) for t in spec.trials()]
    keys1 = [seed_key(t.run.to_dict()) for t in spec1.trials()]
    assert keys0 == keys1 and len(set(keys0)) == len(SLICE)  # the seed is the only difference
    assert keys0 == [hash_of(t.run_id) for t in spec.trials()]  # and the key is the seed-0 run's hash


def test_fresh_runs_beside_committed_twins_with_verdicts(tmp_path):
    committed_root = committed_ladder(tmp_path)
    spec = slice_spec(tmp_path, extra=[(4, 4.0e4, 2048)])  # E=4 is not in the ladder: no twin
    fresh_root = train(spec, tmp_path / "results")
    by_point = {(t.point["n_experts"], t.point["active_params"]): t.run_id for t in spec.trials()}
    committed = load_committed(committed_root)

    # the reference: pooled SD = sqrt(mean of the per-config sample variances), all configs have 2 seeds
    ok = committed.ok
    groups = {}
    for _, r in ok.iterrows():
        cfg = json.loads((committed_root / "runs" / r["run_id"] / "config.json").read_text())
        groups.setdefault(seed_key(cfg), []).append(float(r["loss"]))
    pairs = [g for g in groups.values() if len(g) == 2]
    assert len(pairs) == len(SECOND_SEEDS)
    sd = math.sqrt(np.mean([np.var(g, ddof=1) for g in pairs]))

    # move one fresh run past the tolerance, fail another; the rest are bit-identical to their twins
    off, failed = by_point[(8, 4.0e4)], by_point[(1, 8.0e4)]
    twin_loss = float(ok.set_index("run_id").loc[off, "loss"])
    set_loss(fresh_root / "runs" / off, twin_loss + 3.0 * sd)
    set_loss(fresh_root / "runs" / failed, None, status="failed")
    write_table(fresh_root)

    rep = compare(load_results(fresh_root), committed, [t.run_id for t in spec.trials()])
    assert rep.noise.sd == pytest.approx(sd, rel=1e-9) and rep.noise.dof == 2
    lo, hi = rep.noise.interval
    assert lo < sd < hi
    seed1 = SweepSpec.from_file(tmp_path / "ladder_seed1.yaml").trials()
    twins0 = {r for r in ok["run_id"] if hash_of(r) in {seed_key(t.run.to_dict()) for t in seed1}}
    assert len(twins0) == len(seed1)  # the noise rests on the second seeds and their seed-0 runs
    assert set(rep.noise.groups["runs"].str.split(", ").explode()) == {t.run_id for t in seed1} | twins0
    rows = rep.rows.set_index("run")
    assert len(rows) == len(SLICE) + 1
    same = by_point[(1, 4.0e4)]
    assert rows.loc[same, "difference"] == 0.0 and rows.loc[same, "verdict"].startswith("reproduced")
    assert rows.loc[same, "committed run"] == same
    assert rows.loc[off, "difference"] == pytest.approx(3.0 * sd)
    assert rows.loc[off, "difference / seed SD"] == pytest.approx(3.0)
    assert rows.loc[off, "verdict"].startswith("not reproduced") and TOLERANCE_SD < 3.0
    assert rows.loc[failed, "verdict"] == "fresh run failed: nothing to compare"
    lone = by_point[(4, 4.0e4)]
    assert rows.loc[lone, "verdict"].startswith("no committed twin")
    assert rep.sentence.startswith(
        f"2 of 3 fresh runs reproduce their committed twins within {TOLERANCE_SD:g} "
    )
    assert "not reproduced: E=8 N=" in rep.sentence and "(+3.0 SD)" in rep.sentence
    assert rep.line == f"reproduction: {rep.sentence}"

    # the fits use the committed ladder only: no fresh run enters beside its twin
    assert rep.fits_on == "committed" and report_data(rep) is committed
    sec = reproduction_section(rep)
    assert sec.key == "reproduction" and sec.lead.startswith("2 of 3")
    assert [name for name, _ in sec.figures] == ["reproduction"]
    captions = [c for c, _ in sec.tables]
    assert len(sec.tables[0][1]) == len(SLICE) + 1 and "Seed noise" in captions[1]
    assert any("committed ladder's runs only" in n for n in sec.notes)
    json.dumps(rep.to_json())  # fits.json can hold it


def test_no_seed_noise_means_no_verdict(tmp_path):
    committed = load_committed(committed_ladder(tmp_path, second_seeds=()))
    spec = slice_spec(tmp_path)
    rep = compare(load_results(train(spec, tmp_path / "results")), committed)
    assert rep.noise.sd is None and rep.noise.groups.empty
    assert set(rep.rows["verdict"]) == {"no seed noise measured yet: no verdict"}
    assert rep.sentence.startswith("4 of 4 fresh runs have committed twins") and "no verdict" in rep.sentence
    notes = reproduction_section(rep).notes
    assert any(n.startswith("Seed noise: not measured yet") for n in notes)


def test_nothing_committed_yet(tmp_path):
    empty = tmp_path / "committed" / "ladder"
    write_table(empty)  # what ladder_sync leaves before any row: an empty runs table
    assert load_committed(empty) is None and load_committed(tmp_path / "nowhere") is None
    spec = slice_spec(tmp_path)
    fresh = load_results(train(spec, tmp_path / "results"))
    for committed in (None, load_committed(empty)):
        rep = compare(fresh, committed)
        assert rep.sentence.startswith("nothing to compare yet") and "4 fresh runs" in rep.sentence
        assert rep.fits_on == "fresh" and report_data(rep) is rep.fresh
        assert set(rep.rows["verdict"]) == {"no committed twin (not in the fits)"}
    rep = compare(fresh, None, committed_at="data/ladder/ladder")
    assert rep.sentence.startswith("nothing to compare yet: the committed ladder (data/ladder/ladder) holds")
    # a ladder that holds runs but none of the slice's
    other = SweepSpec.from_file(spec_file(tmp_path / "o.yaml", "ladder", [(1, 1.6e5, 4096)], 0))
    rep = compare(fresh, load_committed(train(other, tmp_path / "other")))
    assert rep.sentence.startswith("nothing to compare yet: none of the 4 fresh runs")
    assert rep.fits_on == "committed"


def test_demo_leaves_out_runs_of_an_earlier_slice(tmp_path):
    old = SweepSpec.from_file(spec_file(tmp_path / "old.yaml", "demo", [(1, 1.6e5, 4096)], 0))
    train(old, tmp_path / "results")  # an earlier demo sweep left a run in results/demo
    spec = slice_spec(tmp_path)
    rep = compare(load_results(train(spec, tmp_path / "results")), None, [t.run_id for t in spec.trials()])
    assert sorted(rep.rows["run"]) == sorted(t.run_id for t in spec.trials())
    assert sorted(rep.fresh.runs["run_id"]) == sorted(rep.rows["run"])


def fake_sweep(calls: list):
    def run_sweep(spec, results, *, address=None, num_cpus=None):
        root = Path(results) / spec.name
        first = not (root / "runs.parquet").is_file()
        train(spec, Path(results))
        calls.append(first)
        n = len(spec.trials())
        return {"sweep": spec.name, "runs": n, "trained": n if first else 0, "skipped": 0 if first else n,
                "failed": 0, "table": str(root / "runs.parquet")}  # fmt: skip

    return run_sweep


@pytest.mark.slow  # fits a law (JAX compilation) twice
def test_demo_reports_beside_the_ladder_then_only_refreshes(tmp_path, monkeypatch, capsys):
    calls: list[bool] = []
    monkeypatch.setattr(demo, "_sweep_api", lambda: (SweepSpec, fake_sweep(calls)))
    ladder = committed_ladder(tmp_path)
    sweep = spec_file(tmp_path / "demo.yaml", "demo", SLICE, 0)
    results = tmp_path / "results"
    argv = ["demo", "--results", str(results), "--sweep", str(sweep), "--ladder", str(ladder), *FAST]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    index = results / "demo" / "report" / "index.html"
    assert out[1] == f"report: {index.resolve()}" and index.is_file()
    assert out[2] == (
        "  reproduction: 4 of 4 fresh runs reproduce their committed twins within 2 seed SDs (seed SD 0.0158 "
        "nats/token from 2 committed configs with 2+ seeds; largest |difference| 0.0000)"
    )
    assert out[3].startswith("  best law: chinchilla")
    fits = json.loads((results / "demo" / "report" / "fits.json").read_text())
    n_ladder = len(LADDER) + len(SECOND_SEEDS)
    assert fits["n_runs"] == n_ladder  # the fits rest on the committed runs, the fresh twins are not added
    assert fits["sections"][0] == "reproduction" and fits["reproduction"]["fits_on"] == "committed"
    assert len(fits["reproduction"]["runs"]) == len(SLICE)
    assert "Reproduction" in index.read_text()
    first = index.stat().st_mtime_ns

    assert main(argv) == 0
    out2 = capsys.readouterr().out.splitlines()
    assert calls == [True, False] and "0 trained now, 4 reused" in out2[0]
    assert out2[2:] == out[2:]
    assert index.stat().st_mtime_ns > first


def test_demo_sweep_is_a_slice_of_the_ladder():
    """Every demo run is a run of the committed ladder's sweeps (the same run id: family rules, recipe,
    learning rate and seed), so each has a twin once the ladder holds it; until sweeps/ladder.yaml exists, the
    demo sweep must at least plan distinct runs that each evaluate more than once."""
    spec = SweepSpec.from_file(demo.find_sweep_file(demo.DEFAULT_SWEEP))
    trials = spec.trials()
    assert len({hash_of(t.run_id) for t in trials}) == len(trials) == len(spec.points())
    for t in trials:
        steps = t.run.train.tokens // (t.run.train.batch_size * t.run.train.seq_len)
        assert 0 < t.run.train.eval_every * 2 <= steps
    ladder = [demo.REPO / "sweeps" / f for f in ("ladder.yaml", "ladder_seed1.yaml")]
    if ladder[0].is_file():
        ids = {hash_of(t.run_id) for f in ladder if f.is_file() for t in SweepSpec.from_file(f).trials()}
        assert {hash_of(t.run_id) for t in trials} <= ids


def test_demo_sweep_file_and_ladder_are_found_from_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: the defaults still resolve to the repo's files
    path = demo.find_sweep_file(demo.DEFAULT_SWEEP)
    assert path.is_file() and path.parent.name == "sweeps"
    ladder = demo.find_ladder(None)  # absent until the first ladder rows are committed
    assert ladder is None or (ladder.is_dir() and ladder.parts[-3:] == ("data", "ladder", "ladder"))


@pytest.mark.parametrize(
    "argv",
    [["--sweep", "nope.yaml"], ["--bootstrap", "-2"], ["--laws", "bogus"], ["--ladder", "no/such/folder"]],
)
def test_demo_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setattr(demo, "_sweep_api", lambda: pytest.fail("the sweep must not start"))
    assert main(["demo", "--results", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moelab: error: ") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_demo_broken_ladder_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "_sweep_api", lambda: pytest.fail("the sweep must not start"))
    ladder = tmp_path / "ladder"
    ladder.mkdir()
    (ladder / "runs.parquet").write_bytes(b"not a parquet file")
    assert main(["demo", "--results", str(tmp_path / "r"), "--ladder", str(ladder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moelab: error: ") and "runs.parquet" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
