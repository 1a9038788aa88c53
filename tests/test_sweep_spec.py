"""Sweep specs: validation (one-line errors naming the key), expansion, run ids, states and the plan."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moelab.accounting import train_flops_per_token
from moelab.errors import ConfigError
from moelab.files import write_json_atomic
from moelab.sweep.plan import make_plan
from moelab.sweep.scheduler import trial_order
from moelab.sweep.spec import SweepSpec
from moelab.sweep.state import decide, run_state

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "model": {"vocab_size": 256, "max_seq_len": 64},
    "train": {"seq_len": 32, "batch_size": 4},
    "axes": {"active_params": ["2e4", 5e4], "n_experts": [1, 4], "tokens": [1e4, 3e4]},
    "seeds": [0],
}


def spec_of(**changes) -> SweepSpec:
    raw = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return SweepSpec.from_dict(raw, source="t.yaml")


def test_grid_expands_to_the_cross_product_with_budgets_applied():
    trials = spec_of().trials()
    assert len(trials) == 2 * 2 * 2
    seen = {(t.point["active_params"], t.point["n_experts"], t.point["tokens"]) for t in trials}
    assert seen == {(a, e, d) for a in (20000, 50000) for e in (1, 4) for d in (10000, 30000)}
    for t in trials:
        from moelab.accounting import param_counts

        assert t.run.model.n_experts == t.point["n_experts"]
        assert abs(param_counts(t.run.model).active / t.point["active_params"] - 1) < 0.05
        assert t.run.train.tokens == t.point["tokens"]


def test_zip_pairs_values_and_seeds_cross_everything():
    spec = spec_of(
        generator="zip",
        axes={"active_params": [2e4, 5e4], "n_experts": [1, 4], "tokens": [1e4, 3e4]},
        seeds=[0, 1, 2],
    )
    points = spec.points()
    assert len(points) == 2 * 3
    assert {(p["active_params"], p["n_experts"], p["tokens"]) for p in points} == {
        (20000, 1, 10000),
        (50000, 4, 30000),
    }
    assert sorted({p["seed"] for p in points}) == [0, 1, 2]
    assert len({t.run_id for t in spec.trials()}) == 6


def test_linked_axes_move_together_inside_the_grid():
    spec = spec_of(
        axes={"active_params": [2e4, 2e4, 5e4], "tokens": [1e4, 3e4, 1e4], "n_experts": [1, 4]},
        linked=[["active_params", "tokens"]],
    )
    points = {(p["active_params"], p["tokens"], p["n_experts"]) for p in spec.points()}
    assert points == {(a, d, e) for a, d in [(20000, 10000), (20000, 30000), (50000, 10000)] for e in (1, 4)}
    assert len(spec.trials()) == 6


def test_isoflop_tokens_spend_the_budget():
    spec = spec_of(
        generator="isoflop", axes={"flops": [1e11, 3e11], "active_params": [2e4, 5e4, 1e5], "n_experts": [4]}
    )
    trials = spec.trials()
    assert len(trials) == 6
    for t in trials:
        spent = t.run.train.tokens * train_flops_per_token(t.run.model, t.run.train.seq_len)
        assert abs(spent / t.point["flops"] - 1) < 1e-3
    # bigger models get fewer tokens at a fixed budget
    at = sorted((t.point["active_params"], t.run.train.tokens) for t in trials if t.point["flops"] == 1e11)
    assert [d for _, d in at] == sorted([d for _, d in at], reverse=True)


BAD = [
    ({"axes": {"n_experts": None}}, "axes.n_experts", "null"),
    ({"nmae": "x"}, "nmae", "unknown key"),
    ({"name": "a b"}, "name", "folder-safe"),
    ({"generator": "random"}, "generator", "grid|zip|isoflop"),
    ({"axes": {"experts": [1, 2]}}, "axes.experts", "unknown axis"),
    ({"axes": {"n_experts": [1, "many"], "active_params": [2e4]}}, "axes.n_experts", "must be a number"),
    ({"axes": {"n_experts": [1.5], "active_params": [2e4]}}, "axes.n_experts", "integers"),
    ({"axes": {"active_params": [2e4], "tokens": [1e4], "flops": [1e12]}}, "axes.flops", "not both"),
    (
        {"axes": {"active_params": [2e4], "n_experts": [2], "top_k": [1, 4]}},
        "axes.top_k",
        "exceeds n_experts",
    ),
    (
        {"axes": {"active_params": [2e4], "shared_ratio": [0, 1.5], "n_experts": [4]}},
        "axes.shared_ratio",
        "[0, 1)",
    ),
    ({"axes": {"active_params": [2e4, 2e4]}}, "axes.active_params", "repeated"),
    ({"axes": {"active_params": []}}, "axes.active_params", "at least one"),
    (
        {
            "axes": {"active_params": [2e4, 2e4], "tokens": [1e4, 1e4]},
            "linked": [["active_params", "tokens"]],
        },
        "axes.active_params",
        "repeat a combination",
    ),
    (
        {"axes": {"active_params": [2e4, 5e4], "tokens": [1e4]}, "linked": [["active_params", "tokens"]]},
        "axes.tokens",
        "equal lengths",
    ),
    (
        {"axes": {"active_params": [2e4], "tokens": [1e4]}, "linked": [["active_params", "top_k"]]},
        "linked[0]",
        "not in axes",
    ),
    ({"generator": "zip", "linked": [["active_params", "tokens"]]}, "linked", "zip already links"),
    (
        {"generator": "zip", "axes": {"active_params": [2e4, 5e4], "n_experts": [1, 2, 4]}},
        "axes.n_experts",
        "equal lengths",
    ),
    (
        {"generator": "isoflop", "axes": {"active_params": [2e4], "tokens": [1e4]}},
        "axes.tokens",
        "derives tokens",
    ),
    ({"generator": "isoflop", "axes": {"active_params": [2e4]}}, "axes.flops", "compute budgets"),
    ({"axes": {"shared_ratio": [0.5], "n_experts": [4]}}, "axes.shared_ratio", "needs active_params"),
    (
        {"model": {"vocab_size": 256, "n_experts": 4}, "axes": {"active_params": [2e4], "n_experts": [1, 4]}},
        "model.n_experts",
        "also an axis",
    ),
    ({"train": {"tokens": 1000}}, "train.tokens", "also set by axes.tokens"),
    ({"train": {"seq_len": 128}}, "train.seq_len", "exceeds model.max_seq_len"),
    ({"train": {"seq_lenn": 128}}, "train", "unknown train config field"),
    ({"model": {"vocab_size": 1000}}, "model.vocab_size", "byte tokenizer"),
    ({"seeds": [0, -1]}, "seeds", "integers >= 0"),
    ({"model": {"preset": "nope"}, "axes": {"n_experts": [4]}}, "model.preset", "unknown preset"),
    ({"resources": {"cpu": 1}}, "resources.cpu", "unknown key"),
    ({"resources": {"cpus": 0}}, "resources.cpus", "> 0"),
    ({"resources": {"custom": {"GPU": 1}}}, "resources.custom.GPU", "resources.gpus"),
    ({"max_concurrency": 0}, "max_concurrency", ">= 1"),
    ({"retries": -1}, "retries", ">= 0"),
    ({"axes": {"n_experts": [4], "active_params": [2e4], "top_k": [8]}}, "axes.top_k", "exceeds"),
]


@pytest.mark.parametrize(("changes", "key", "words"), BAD, ids=[b[1] + ":" + b[2][:12] for b in BAD])
def test_bad_specs_fail_with_one_line_naming_the_key(changes, key, words):
    with pytest.raises(ConfigError) as info:
        spec_of(**changes).trials()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"t.yaml: {key}"), message
    assert words in message, message


def test_cli_rejects_a_bad_file_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\naxes:\n  n_experts: [1, 4]\n  top_k: [2]\n  active_params: [2e4]\n"
        "model: {vocab_size: 256}\n"
    )
    results = tmp_path / "results"
    out = subprocess.run(
        [sys.executable, "-m", "moelab", "sweep", "run", str(bad), "--results", str(results)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "axes.top_k" in lines[0], out.stderr
    assert not results.exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\naxes: [1, 2\n")
    out = subprocess.run(
        [sys.executable, "-m", "moelab", "sweep", "plan", str(broken)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "invalid YAML" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_are_valid(path):
    spec = SweepSpec.from_file(path)
    trials = spec.trials()
    # a second-seed, IsoFLOP or top-cell file trains into its sweep's folder (sweeps/ladder_seed1.yaml,
    # ladder_isoflop.yaml, ladder_top.yaml and ladder_top_seed1.yaml are sweep "ladder")
    assert spec.name == re.sub(r"_(seed\d+|isoflop|top|top_seed\d+)$", "", path.stem)
    assert len(trials) == len(spec.points()), "a shipped sweep must not repeat a configuration"


def test_the_ladder_keeps_its_rules():
    """Every run the ladder's files ask for (grid, second seeds, IsoFLOP profiles, top cell) has >= 1,000
    steps and stays under one epoch of the corpus's training split (11.6 M byte tokens); each IsoFLOP budget
    has 5 sizes per architecture at one compute; no two files ask for the same run."""
    corpus_tokens = 11.0e6  # the default corpus's training split is 11.6 M byte tokens
    ids = []
    for name in ("ladder.yaml", "ladder_seed1.yaml", "ladder_isoflop.yaml", "ladder_top.yaml",
                 "ladder_top_seed1.yaml"):  # fmt: skip
        spec = SweepSpec.from_file(REPO / "sweeps" / name)
        assert spec.name == "ladder"
        for t in spec.trials():
            steps = t.run.total_steps()
            assert steps >= 1000 and steps * t.run.train.tokens_per_step < corpus_tokens, t.run_id
            ids.append(t.run_id)
    assert len(ids) == len(set(ids))
    iso = SweepSpec.from_file(REPO / "sweeps" / "ladder_isoflop.yaml")
    budgets: dict = {}
    for t in iso.trials():
        budgets.setdefault((t.run.model.n_experts, t.point["flops"]), []).append(t.point["active_params"])
    assert len(budgets) == 6 and all(len(set(v)) == 5 for v in budgets.values())


def test_states_and_actions(tmp_path):
    run = tmp_path / "runs" / "abcdefabcdef"
    assert run_state(run) == "new"
    write_json_atomic(run / "summary.json", {"status": "running"})
    assert run_state(run) == "started"
    (run / "checkpoints" / "20.orbax-checkpoint-tmp-3").mkdir(parents=True)
    assert run_state(run) == "started"  # an unfinished save does not count
    (run / "checkpoints" / "10").mkdir()
    assert run_state(run) == "interrupted"
    for status in ("succeeded", "failed", "diverged"):
        write_json_atomic(run / "summary.json", {"status": status})
        assert run_state(run) == status
    assert [decide(s) for s in ("new", "started", "interrupted", "succeeded", "failed", "diverged")] == [
        "run",
        "run",
        "resume",
        "skip",
        "hold",
        "hold",
    ]
    assert decide("failed", rerun_failed=True) == decide("diverged", rerun_failed=True) == "rerun"


def test_plan_reads_states_and_estimates(tmp_path):
    spec = spec_of()
    trials = spec.trials()
    done, failed, paused = trials[0], trials[1], trials[2]
    root = tmp_path / "t" / "runs"
    wall = spec.overhead_s + 10.0
    write_json_atomic(
        root / done.run_id / "summary.json", {"status": "succeeded", "tokens": 5e4, "wall_time_s": wall}
    )
    write_json_atomic(root / failed.run_id / "summary.json", {"status": "diverged"})
    write_json_atomic(root / paused.run_id / "summary.json", {"status": "running"})
    half = paused.run.total_steps() // 2
    (root / paused.run_id / "checkpoints" / str(half)).mkdir(parents=True)
    planned, rate, src = make_plan(spec, tmp_path, trials=trials)
    by_id = {p.run_id: p for p in planned}
    assert by_id[done.run_id].action == "skip" and by_id[done.run_id].est_s == 0
    assert by_id[failed.run_id].action == "hold"
    assert by_id[paused.run_id].action == "resume"
    assert src.startswith("median of 1") and rate == pytest.approx(5e4 * done.run.flops_per_token() / 10.0)
    fresh = by_id[trials[3].run_id]
    assert fresh.action == "run"
    assert fresh.est_s == pytest.approx(spec.overhead_s + fresh.flops / rate)
    assert by_id[paused.run_id].est_s < spec.overhead_s + by_id[paused.run_id].flops / rate
    planned, _, _ = make_plan(spec, tmp_path, rerun_failed=True, trials=trials)
    assert {p.run_id: p.action for p in planned}[failed.run_id] == "rerun"


def test_yaml_numbers_like_1e7_are_read(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({**BASE, "name": "n"}).replace("'2e4'", "2e4"))
    assert isinstance(yaml.safe_load(path.read_text())["axes"]["active_params"][0], str)  # YAML 1.1 quirk
    assert {t.point["active_params"] for t in SweepSpec.from_file(path).trials()} == {20000, 50000}


def test_trial_resources_and_thread_environment():
    from moelab.sweep.trial import thread_env

    spec = spec_of(resources={"cpus": 2, "gpus": 0.5, "custom": {"TPU": 4}})
    assert spec.resources.ray_options() == {"num_cpus": 2, "num_gpus": 0.5, "resources": {"TPU": 4}}
    env = thread_env(spec.resources.cpus, spec.resources.gpus)
    assert env["PJRT_NPROC"] == env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.45)
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in thread_env(1.5, 1)
    assert thread_env(0.5)["PJRT_NPROC"] == "1"


def test_presets_as_the_base_model():
    from moelab.presets import get_preset

    base = get_preset("hy8-100k")
    spec = SweepSpec.from_dict({"name": "p", "model": {"preset": "hy8-100k"}, "axes": {"n_experts": [4, 8]}})
    models = {t.point["n_experts"]: t.run.model for t in spec.trials()}
    assert models[8] == base and models[4] == base.replace(n_experts=4)
    budgeted = SweepSpec.from_dict(
        {"name": "p", "model": {"preset": "hy8-100k"}, "axes": {"active_params": [1e5, 3e5]}}
    ).trials()
    assert budgeted[0].run.model == base  # the preset is the family member of its own budget
    assert budgeted[1].run.model.d_model > base.d_model and budgeted[1].run.model.overflow == base.overflow


@pytest.mark.parametrize("order", ["longest", "listed"])
def test_trial_order_is_longest_first_or_the_spec_order(tmp_path, order):
    """``order: listed`` trains in the spec's order (a ladder grown over sittings: its priorities first); the
    default trains the longest estimated run first."""

    raw = {"name": "o", "model": {"vocab_size": 256, "max_seq_len": 64}, "train": {"seq_len": 32},
           "generator": "zip", "axes": {"active_params": [1e4, 4e4, 2e4], "tokens": [1e5, 1e5, 1e5]},
           "order": order}  # fmt: skip
    spec = SweepSpec.from_dict(raw)
    assert spec.order == order
    planned, _, _ = make_plan(spec, tmp_path)
    sizes = [p.trial.point["active_params"] for p in trial_order(spec, planned)]
    assert sizes == ([1e4, 4e4, 2e4] if order == "listed" else [4e4, 2e4, 1e4])


def test_unknown_order_is_one_line_naming_the_allowed_values():
    raw = {"name": "o", "axes": {"active_params": [1e4], "tokens": [1e5]}, "order": "random"}
    with pytest.raises(ConfigError, match=r"order.*longest, listed.*'random'"):
        SweepSpec.from_dict(raw)
