"""IsoFLOP sweeps centred on each budget's expected optimum, and the plan's checks (tokens per parameter,
epochs of the corpus) against slow references; the shipped cluster sweeps plan no absurd run (issue 12)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from moelab.cli import main
from moelab.errors import ConfigError
from moelab.presets import paper_facts
from moelab.sweep.plan import check_plan, corpus_train_tokens, make_plan
from moelab.sweep.spec import SweepSpec, build_run

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "name": "iso",
    "model": {"vocab_size": 256, "max_seq_len": 64},
    "data": {"corpus": "default", "tokenizer": "byte"},
    "train": {"seq_len": 64, "batch_size": 8},
    "generator": "isoflop",
    "axes": {"flops": [1e12, 1e13], "n_experts": [4]},
}


def test_sizes_are_centred_on_the_budgets_chinchilla_optimum():
    spec = SweepSpec.from_dict({**BASE, "isoflop": {"sizes": 5, "factor": 2, "tokens_per_param": 20}})
    pts = spec.points()
    assert len(pts) == 10 and len(spec.trials()) == 10
    for c in (1e12, 1e13):
        sizes = sorted(p["active_params"] for p in pts if p["flops"] == c)
        np.testing.assert_allclose(np.diff(np.log2(sizes)), 1.0, atol=0.01)  # a factor 2 apart (3 digits)
        # slow reference: the nominal N on a fine log grid whose run trains closest to 20 tokens per parameter
        grid = np.geomspace(sizes[0], sizes[-1], 201)
        ratio = [
            build_run(spec, {"n_experts": 4, "flops": c, "active_params": n}).train.tokens / n for n in grid
        ]
        best = grid[int(np.argmin(np.abs(np.log(np.array(ratio) / 20))))]
        assert sizes[2] == pytest.approx(best, rel=0.03)
        mid = build_run(spec, {"n_experts": 4, "flops": c, "active_params": sizes[2]})
        # the family's shapes are discrete (whole layers and widths), so the ratio steps around 20
        assert mid.train.tokens / sizes[2] == pytest.approx(20, rel=0.1)
        assert mid.train.tokens * mid.flops_per_token() == pytest.approx(c, rel=1e-3)  # spends the budget


def test_sizes_centred_on_a_papers_allocation_law():
    spec = SweepSpec.from_dict({**BASE, "isoflop": {"center": "hunyuan-large", "sizes": 3, "factor": 2}})
    for c in (1e12, 1e13):
        sizes = sorted(p["active_params"] for p in spec.points() if p["flops"] == c)
        want = paper_facts("hunyuan-large").allocation(c)[0]
        assert sizes[1] == pytest.approx(want, rel=5e-3) and sizes[2] / sizes[1] == pytest.approx(2, rel=0.01)


@pytest.mark.parametrize(
    "change,key",
    [
        ({"isoflop": {"sizes": 2}}, "isoflop.sizes"),
        ({"isoflop": {"factor": 1}}, "isoflop.factor"),
        ({"isoflop": {"spread": 2}}, "isoflop.spread"),
        ({"isoflop": {"center": "dense-1m"}}, "isoflop.center"),
        ({"isoflop": {"center": "hunyuan-large", "tokens_per_param": 20}}, "isoflop.center"),
        ({"isoflop": {}, "axes": {**BASE["axes"], "active_params": [1e4]}}, "axes.active_params"),
        ({"isoflop": {}, "generator": "grid", "axes": {"tokens": [1e5]}}, "isoflop"),
        ({"axes": {"flops": [1e12]}}, "axes.active_params"),  # neither sizes nor a centring block
        ({"checks": {"min_tokens_per_param": 0}}, "checks.min_tokens_per_param"),
        ({"checks": {"epochs": 1}}, "checks.epochs"),
    ],
)
def test_bad_isoflop_and_checks_name_the_key(change, key):
    with pytest.raises(ConfigError, match=f"s.yaml: {key}:"):
        SweepSpec.from_dict({**BASE, **change}, source="s.yaml")


def test_plan_flags_runs_under_the_floor_or_over_one_epoch(tmp_path, capsys):
    raw = {
        **BASE,
        "generator": "grid",
        "axes": {"active_params": [2e4], "tokens": [1e4, 1e6, 4e6]},
        "checks": {"min_tokens_per_param": 1, "corpus_tokens": 2e6},
    }
    spec = SweepSpec.from_dict(raw)
    planned, _, _ = make_plan(spec, tmp_path)
    checks, notes = check_plan(spec, planned)
    got = {p.tokens: c for p, c in zip(planned, checks, strict=True)}
    for tokens, c in got.items():
        n = next(p.active_params for p in planned if p.tokens == tokens)
        assert c.tokens_per_param == pytest.approx(tokens / n) and c.epochs == pytest.approx(tokens / 2e6)
        assert any(f.startswith("D/N") for f in c.flags) == (tokens / n < 1)
        assert any("epochs" in f for f in c.flags) == (tokens > 2e6)
    assert [bool(c.flags) for _, c in sorted(got.items())] == [True, False, True]
    assert "checks.corpus_tokens" in notes[0]
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(raw))
    assert main(["sweep", "plan", str(path), "--results", str(tmp_path), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted(len(r["flags"]) for r in rows) == [0, 1, 1]


def test_corpus_count_matches_the_token_store(tmp_path, monkeypatch):
    """A byte corpus's training tokens, counted without tokenizing, equal the token store's (slow reference);
    once the store exists the plan reads it."""
    from moelab.data import prepare

    monkeypatch.setenv("MOELAB_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    text = "\n\n".join(
        "".join(rng.choice(list("abcdé \n"), size=int(rng.integers(50, 400)))) for _ in range(40)
    )
    corpus = tmp_path / "c.txt"
    corpus.write_text(text)
    spec = SweepSpec.from_dict(
        {
            **BASE,
            "generator": "grid",
            "data": {"corpus": str(corpus)},
            "axes": {"active_params": [2e4], "tokens": [1e5]},
        }
    )
    run = spec.trials()[0].run
    counted, source = corpus_train_tokens(run, spec)
    assert source.startswith("counted")
    store = prepare(str(corpus), tokenizer="byte", vocab_size=256, val_fraction=run.data.val_fraction).store
    assert counted == store.meta["splits"]["train"]["tokens"] == len(store.train)
    again, source = corpus_train_tokens(run, spec)
    assert again == counted and source == "the prepared token store"


@pytest.mark.parametrize("name", ["hunyuan_family", "isoflop"])
def test_shipped_cluster_isoflop_sweeps_plan_no_absurd_run(name, tmp_path):
    spec = SweepSpec.from_file(REPO / "sweeps" / f"{name}.yaml")
    planned, _, _ = make_plan(spec, tmp_path)
    checks, _ = check_plan(spec, planned)
    assert not [c.flags for c in checks if c.flags]
    for c in spec.axes["flops"]:  # every budget's sizes bracket its expected optimum
        sizes = sorted(p["active_params"] for p in spec.points() if p["flops"] == c)
        centre = spec.expected_optimum(c, {k: v[0] for k, v in spec.axes.items() if k != "flops"})
        assert sizes[0] < centre < sizes[-1] and math.isclose(sizes[2], centre, rel_tol=5e-3)
