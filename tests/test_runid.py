"""Run ids that last: the hash leaves out fields at their baseline, so the schema can grow without renaming
(and retraining) anything; folders written by the first schema (commit 11da807) are adopted, not retrained."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moelab.config import ModelConfig
from moelab.sweep.plan import make_plan
from moelab.sweep.runid import adopt, hash_of, is_run_id, run_id, slug
from moelab.sweep.spec import SweepSpec
from moelab.sweep.store import PARQUET
from moelab.train import identity
from moelab.train.config import DataConfig, RunConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "data" / "legacy-11da807"
SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def demo_trials():
    return SweepSpec.from_file(REPO / "sweeps" / "demo.yaml").trials()


def test_run_id_is_a_slug_and_the_hash_of_the_canonical_form():
    t = demo_trials()[0]
    canon = identity.canonical(t.run.to_dict())
    expected = hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert t.run_id == f"{slug(t.run)}-{expected[:12]}" and hash_of(t.run_id) == expected[:12]
    assert t.run_id.startswith(f"E{t.run.model.n_experts}k{t.run.model.top_k}-N")
    # fields at their baseline are not in the canonical form; the sweep's own choices are
    assert "vocab_size" not in canon["model"] and canon["model"]["d_model"] == t.run.model.d_model
    # non-semantic fields leave the id alone; a semantic one changes it
    train = t.run.train
    assert run_id(t.run.replace(train=dataclasses.replace(train, log_every=99, eval_every=7))) == t.run_id
    assert run_id(t.run.replace(train=dataclasses.replace(train, lr=1e-3))) != t.run_id


def test_every_field_has_a_baseline_and_the_baseline_is_frozen():
    for section, cls in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        known = set(identity.BASELINE[section]) | set(identity.NON_SEMANTIC[section])
        assert fields <= known, (
            f"{section} fields without an identity baseline: {sorted(fields - known)}; append each to "
            "moelab/train/identity.py ADDED with the value that reproduces the code before it"
        )
    # The first schema's baselines are the 11da807 defaults: editing one would rename committed runs.
    first = {
        s: {k: v for k, v in f.items() if k in identity.SCHEMA_1[s]} for s, f in identity.BASELINE.items()
    }
    assert identity.digest(first) == "9678265323df"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_new_field_with_a_neutral_default_keeps_every_id(section, monkeypatch):
    trials = demo_trials()
    cls = SECTIONS[section]
    grown = dataclasses.make_dataclass(
        f"Grown{cls.__name__}",
        [("new_knob", float, dataclasses.field(default=0.0))],
        bases=(cls,),
        frozen=True,
    )
    monkeypatch.setitem(identity.BASELINE, section, {**identity.BASELINE[section], "new_knob": 0.0})
    for t in trials:
        old = getattr(t.run, section)
        new = grown(**old.to_dict())
        assert new.to_dict()["new_knob"] == 0.0
        assert run_id(t.run.replace(**{section: new})) == t.run_id
        assert run_id(t.run.replace(**{section: grown(**old.to_dict(), new_knob=1.0)})) != t.run_id


def test_a_saved_config_missing_a_field_reads_as_its_baseline(monkeypatch):
    run = demo_trials()[0].run
    saved = run.to_dict()
    # a changed default never rewrites what a saved run meant: beta2's baseline stays 0.95
    del saved["train"]["beta2"]
    assert RunConfig.from_saved(saved).train.beta2 == 0.95
    monkeypatch.setitem(identity.BASELINE, "train", {**identity.BASELINE["train"], "future": 3})
    assert identity.upgrade(saved)["train"]["future"] == 3 and "future" not in saved["train"]


def test_run_ids_are_stable_across_processes():
    code = (
        "from moelab.sweep.spec import SweepSpec; import sys; "
        "print(' '.join(t.run_id for t in SweepSpec.from_file(sys.argv[1]).trials()))"
    )
    path = REPO / "sweeps" / "demo.yaml"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.stdout.split() == [t.run_id for t in SweepSpec.from_file(path).trials()]


def test_a_dense_run_is_the_same_run_whatever_its_moe_only_fields_say():
    dense = next(t.run for t in demo_trials() if t.run.model.n_experts == 1)
    moe_knobs = dataclasses.replace(dense.model, capacity_factor=4.0, overflow="recycle", aux_loss_coef=0.1)
    assert run_id(dense.replace(model=moe_knobs)) == run_id(dense)
    moe = next(t.run for t in demo_trials() if t.run.model.n_experts > 1)
    assert run_id(moe.replace(model=dataclasses.replace(moe.model, capacity_factor=4.0))) != run_id(moe)


def test_a_folder_under_an_older_slug_is_renamed_by_its_hash(tmp_path):
    run = demo_trials()[0].run
    old = tmp_path / f"E0-old-format-{hash_of(run_id(run))}"
    old.mkdir()
    (old / "summary.json").write_text("{}")
    assert adopt(tmp_path, [run]) == 1 and (tmp_path / run_id(run) / "summary.json").is_file()
    assert adopt(tmp_path, [run]) == 0


def test_folder_names():
    assert is_run_id("E8k1-N3e5-D1e7-s0-0123456789ab") and is_run_id("0123456789ab")
    assert not is_run_id("not-a-run") and not is_run_id("E8k1-0123456789aB") and not is_run_id("x-0123")


def test_a_results_folder_written_by_the_first_schema_is_adopted_not_retrained(tmp_path):
    """tests/data/legacy-11da807: two finished runs that `moelab sweep run` of commit 11da807 wrote for
    legacy.yaml (checkpoints left out). Today's code reproduces their old ids, renames the folders, skips
    both, and reads and reports them."""
    results = tmp_path / "results"
    shutil.copytree(LEGACY / "results", results)
    raw = yaml.safe_load((LEGACY / "legacy.yaml").read_text())
    # Defaults changed since (beta2, cooldown, dropless eval, recycled gate): today the same file asks for
    # different runs, which are planned as new while the old folders stay as they are.
    changed = SweepSpec.from_dict(raw)
    assert [p.action for p in make_plan(changed, results)[0]] == ["run", "run"]
    # Pinned to what 11da807 did, it names the runs that commit trained.
    raw["train"].update(beta2=0.95, anneal_frac=0.05, eval_dropless=False)
    raw["model"].update(recycle_gate="kept")
    spec = SweepSpec.from_dict(raw)
    old_names = sorted(p.name for p in (results / "legacy" / "runs").iterdir())
    assert sorted(identity.legacy_run_id(t.run.to_dict()) for t in spec.trials()) == old_names
    planned, _, _ = make_plan(spec, results)
    assert [p.action for p in planned] == ["skip", "skip"]
    assert sorted(p.name for p in (results / "legacy" / "runs").iterdir()) == sorted(
        t.run_id for t in spec.trials()
    )
    cli = [sys.executable, "-m", "moelab.cli"]
    status = subprocess.run([*cli, "sweep", "status", "legacy", "--results", str(results)],
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "succeeded 2" in status.stdout
    import pandas as pd

    table = pd.read_parquet(results / "legacy" / PARQUET)
    assert sorted(table.run_id) == sorted(t.run_id for t in spec.trials())
    assert table.loss.notna().all() and (table.status == "succeeded").all()
    # a second plan finds them under their new names: still nothing to train
    planned, _, _ = make_plan(spec, results)
    assert [p.action for p in planned] == ["skip", "skip"]


def test_a_folder_of_the_same_identity_resumes(tmp_path):
    """A dense run folder written with other expert-only fields is the same run: the trainer resumes it."""
    from moelab.train.loop import check_out_dir

    dense = next(t.run for t in demo_trials() if t.run.model.n_experts == 1)
    (tmp_path / "config.json").write_text(json.dumps(dense.to_dict()))
    other = dense.replace(model=dataclasses.replace(dense.model, dispatch="blocksparse", capacity_factor=8.0))
    assert check_out_dir(other, tmp_path) is True
