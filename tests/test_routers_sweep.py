"""sweeps/routers.yaml: router recipes as a sweep axis that plans cleanly, a slice of it trains (aux-loss-free
balancing and expert choice through the real trainer) with per-layer router health in its logs, and the
router bias survives a resume from a checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from moelab.errors import ConfigError
from moelab.presets import ROUTERS, router_family
from moelab.sweep.spec import SweepSpec
from moelab.train.config import RunConfig
from moelab.train.loop import run_training
from tests._train_helpers import write_corpus

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "sweeps" / "routers.yaml"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MOELAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "moelab-cache"))


def test_routers_sweep_plans_every_recipe_at_two_sizes_and_two_expert_counts():
    trials = SweepSpec.from_file(SPEC).trials()
    cells = {
        (round(t.point["active_params"]), t.model.n_experts, router_family(t.model.to_dict())) for t in trials
    }
    assert len(trials) == len(cells) == 22  # dense runs are shared by every recipe
    for n in (100000, 300000):
        assert (n, 1, "dense") in cells
        for e in (8, 16):
            assert {r for (nn, ee, r) in cells if (nn, ee) == (n, e)} == set(ROUTERS)
    for t in trials:  # every recipe sets what it names, on a top-2 model of the dense run's width
        if t.model.n_experts > 1:
            fields = ROUTERS[t.point["router"]]
            assert all(getattr(t.model, k) == v for k, v in fields.items()) and t.model.top_k == 2


@pytest.mark.parametrize(
    "change, key",
    [
        ({"axes": {"active_params": [1e5], "n_experts": [8], "router": ["nope"]}}, "axes.router"),
        ({"model": {"aux_loss_coef": 0.1}}, "model.aux_loss_coef"),
    ],
)
def test_bad_router_axis_is_a_one_line_error(change, key):
    raw = yaml.safe_load(SPEC.read_text())
    for k, v in change.items():
        raw[k] = {**raw[k], **v} if k == "model" else v
    raw.pop("linked", None) if "axes" in change else None
    with pytest.raises(ConfigError) as err:
        SweepSpec.from_dict(raw, source="routers.yaml").trials()
    msg = str(err.value)
    assert "\n" not in msg and f"routers.yaml: {key}:" in msg


def _slice_run(trial, corpus: Path, steps: int) -> RunConfig:
    """A sweep trial shortened to ``steps`` steps on a small corpus (same model, recipe and batch)."""
    d = trial.run.to_dict()
    t = d["train"]
    d["data"] = {**d["data"], "corpus": str(corpus), "val_fraction": 0.2}
    d["train"] = {**t, "tokens": steps * t["batch_size"] * t["seq_len"], "eval_tokens": 4096, "log_every": 2,
                  "eval_every": steps, "checkpoint_every": steps // 2}  # fmt: skip
    return RunConfig.from_dict(d)


@pytest.fixture(scope="module")
def slice_trials():
    trials = SweepSpec.from_file(SPEC).trials()
    pick = {}
    for t in trials:
        if round(t.point["active_params"]) == 100000 and t.model.n_experts == 8:
            pick[t.point["router"]] = t
    return pick


def test_aux_free_slice_trains_logs_router_health_and_resumes_its_bias(slice_trials, tmp_path):
    corpus = write_corpus(tmp_path)
    run = _slice_run(slice_trials["aux-free"], corpus, 8)
    full = run_training(run, tmp_path / "full", progress=False)
    assert full["status"] == "succeeded"
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    health = [r["router"] for r in rows if "router" in r]
    n_layers = run.model.n_layers
    assert len(health) == 4 and all(len(h["load_entropy"]) == n_layers for h in health)
    for h in health:
        assert all(0 <= e <= 1 for e in h["load_entropy"]) and all(len(b) == 8 for b in h["bias"])
        assert all(lo <= hi for lo, hi in zip(h["load_min"], h["load_max"], strict=True))
    # the bias moves by whole steps of gamma = 1e-3 and is not all zero after a few steps
    last = health[-1]["bias"]
    assert any(abs(b) > 0 for layer in last for b in layer)
    assert all(abs(b / 1e-3 - round(b / 1e-3)) < 1e-3 for layer in last for b in layer)
    assert full["router_health"] == health[-1]
    # resume from the step-4 checkpoint: the bias comes back with the parameters, so the run ends the same
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    (tmp_path / "resumed" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    resumed = run_training(run, tmp_path / "resumed", progress=False)
    assert resumed["resumed_from"] == 4
    assert resumed["router_health"]["bias"] == full["router_health"]["bias"]
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)


def test_expert_choice_slice_trains(slice_trials, tmp_path):
    run = _slice_run(slice_trials["expert-choice"], write_corpus(tmp_path), 4)
    s = run_training(run, tmp_path / "ec", progress=False)
    assert s["status"] == "succeeded" and s["eval_loss"] < 5.6  # below the uniform byte loss ln 256
    h = s["router_health"]
    assert h["load_entropy"] == [1.0] * run.model.n_layers  # every expert serves the same number of tokens
    assert all(0 <= d < 1 for d in h["dropped_frac"])
