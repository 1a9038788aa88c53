"""Fuzzing the two inputs users write by hand: a sweep YAML file (through `moelab sweep plan`, in process) and
a run-config dictionary (RunConfig.from_dict and what a run derives from it).

Hypothesis mutates a valid input: keys dropped, unknown keys added, values replaced by wrong types, huge,
negative, non-finite numbers, unicode text, lists and mappings. Whatever it makes, the answer is a valid plan
(exit 0, JSON lines) or one line `moelab: error: ...` with exit code 2, never a traceback. 200 examples per
target (a few seconds each target on an idle machine)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moelab.cli import main
from moelab.errors import MoelabError
from moelab.train.config import RunConfig

EXAMPLES = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1e30, 0.5]),
    st.text(max_size=12),
    st.sampled_from(["", "ü", "名前", "\u202e", "default", "byte", "grid", "1e4", "nan", "yes"]),
)
WEIRD = st.one_of(
    SCALAR,
    st.lists(SCALAR, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALAR, max_size=3),
)

SWEEP = {
    "name": "fz",
    "description": "fuzz base",
    "model": {"vocab_size": 256, "max_seq_len": 64, "capacity_factor": 2.0},
    "data": {"corpus": "default", "tokenizer": "byte"},
    "train": {"seq_len": 32, "batch_size": 4, "lr": 3e-3, "schedule": "wsd"},
    "generator": "grid",
    "axes": {"active_params": [2e4, 4e4], "n_experts": [1, 4], "tokens": [1e5]},
    "seeds": [0],
    "resources": {"cpus": 1},
    "max_concurrency": 2,
    "retries": 1,
}
RUN = {
    "model": {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "head_dim": 16,
              "n_experts": 4, "top_k": 1, "n_shared_experts": 1, "d_shared": 32, "d_expert": 32,
              "max_seq_len": 64},
    "data": {"corpus": "default", "tokenizer": "byte", "val_fraction": 0.1},
    "train": {"tokens": 5000, "seq_len": 16, "batch_size": 8, "lr": 3e-3, "log_every": 5, "eval_every": 20,
              "checkpoint_every": 20, "warmup_frac": 0.1},
}  # fmt: skip


def paths_of(d: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += paths_of(v, (*prefix, k))
    return out


@st.composite
def mutated(draw, base: dict):
    """``base`` with 1 to 4 edits: a value replaced (by a wrong type, an extreme number, text...), a key
    dropped, or an unknown key added, at any depth."""
    d = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = paths_of(d)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        kind = draw(st.sampled_from(["replace", "replace", "numbers", "drop", "add"]))
        if kind == "replace":
            parent[path[-1]] = draw(WEIRD)
        elif kind == "numbers":  # a list of extreme numbers where a list (an axis) or a number is expected
            numbers = st.sampled_from([0, -1, 1e30, -1e30, 1e-30, 3, 7.5])
            parent[path[-1]] = draw(st.lists(numbers, max_size=3))
        elif kind == "drop":
            del parent[path[-1]]
        else:
            parent[draw(st.one_of(st.text(min_size=1, max_size=8), st.integers(-5, 5)))] = draw(WEIRD)
    return d


def _one_line_error(err: str) -> None:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("moelab: error: ") and len(lines[0]) < 600, err


def _plan(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(text, encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["sweep", "plan", str(path), "--json", "--results", str(Path(tmp) / "results")])
        if rc == 0:
            rows = [json.loads(line) for line in out.getvalue().splitlines()]
            assert rows and all("run_id" in r for r in rows), out.getvalue()[:500]
        else:
            assert rc == 2, (rc, err.getvalue())
            _one_line_error(err.getvalue())


def test_the_base_sweep_is_a_valid_plan():
    _plan(yaml.safe_dump(SWEEP))  # the fuzzers start from a valid spec


@EXAMPLES
@given(spec=mutated(SWEEP))
def test_fuzzed_sweep_yaml_gives_a_plan_or_one_line(spec):
    try:
        text = yaml.safe_dump(spec, allow_unicode=True)
    except (yaml.YAMLError, OverflowError):  # a value YAML cannot write (huge ints are fine: they are text)
        return
    _plan(text)


@EXAMPLES
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_text_as_sweep_yaml_gives_one_line(text):
    _plan(text)


def test_the_base_run_config_is_valid():
    run = RunConfig.from_dict(RUN)
    assert run.total_steps() > 0 and math.isfinite(run.flops_per_token())


@EXAMPLES
@given(raw=mutated(RUN))
def test_fuzzed_run_config_is_valid_or_a_config_error(raw):
    """RunConfig.from_dict accepts the dict (and everything a run derives from it works) or raises MoelabError
    with a one-line message; any other exception is a bug."""
    from moelab.sweep.runid import run_id

    try:
        run = RunConfig.from_dict(raw)
    except MoelabError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)
        return
    assert RunConfig.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert run.total_steps() >= 0 and run.flops_per_token() > 0
    assert run_id(run) and run.semantic_dict()


@pytest.mark.parametrize("where", ["csv", "parquet"])
def test_a_loss_column_holding_text_is_named_as_the_cause(tmp_path, where, capsys):
    import pandas as pd

    rows = {"active_params": [1e6, 2e6, 4e6, 8e6, 1.6e7], "tokens": [1e9, 2e9, 4e9, 8e9, 1.6e10],
            "loss": ["3.2", "abc", "2.9", "2.7", "2.6"]}  # fmt: skip
    if where == "csv":
        path = tmp_path / "runs.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        argv = ["fit", "--csv", str(path), "--n-col", "active_params", "--d-col", "tokens"]
        argv += ["--loss-col", "loss"]
    else:
        folder = tmp_path / "sweep"
        folder.mkdir()
        pd.DataFrame({**rows, "status": ["succeeded"] * 5, "run_id": list("abcde")}).to_parquet(
            folder / "runs.parquet"
        )
        argv = ["fit", str(folder)]
    assert main([*argv, "--law", "chinchilla"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "loss" in err and "'abc'" in err and "constant" not in err, err
