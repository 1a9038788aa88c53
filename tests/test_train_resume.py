"""`moelab train` end to end: kill a training process part-way, resume it, and get the uninterrupted result;
bad input gives one line on stderr, exit 2 and nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moelab.cli import main
from tests._train_helpers import tiny_run, write_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(root)
    run = tiny_run(corpus, tokens=16 * 8 * 120, log_every=5, eval_every=30, checkpoint_every=20)
    cfg = root / "run.json"
    cfg.write_text(json.dumps(run.to_dict()))
    env = {**os.environ, "MOELAB_CACHE_DIR": str(root / "cache"), "PYTHONPATH": str(REPO)}
    return root, cfg, env


def _train(cfg, out, env, **kw):
    cmd = [sys.executable, "-m", "moelab", "train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_run_resumes_to_the_same_loss(setup):
    root, cfg, env = setup
    full = _train(cfg, root / "full", env)
    out_full, err_full = full.communicate(timeout=300)
    assert full.returncode == 0, err_full
    summary_full = json.loads((root / "full" / "summary.json").read_text())

    killed = _train(cfg, root / "killed", env)
    ckpts = root / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        if (ckpts / "40").is_dir() or (
            ckpts / "60"
        ).is_dir():  # finalized checkpoints (orbax renames on commit)
            break
        time.sleep(0.05)
    assert killed.poll() is None, "the run finished before it could be killed"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    partial = json.loads((root / "killed" / "summary.json").read_text())
    assert partial["status"] == "running"

    resumed = _train(cfg, root / "killed", env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    s = json.loads((root / "killed" / "summary.json").read_text())
    assert s["status"] == "succeeded" and s["resumed_from"] in (20, 40, 60, 80, 100)
    assert abs(s["eval_loss"] - summary_full["eval_loss"]) < 1e-6
    assert s["steps"] == summary_full["steps"] == 120
    rows = [json.loads(line) for line in (root / "killed" / "metrics.jsonl").read_text().splitlines()]
    rows_full = [json.loads(line) for line in (root / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in rows_full]
    for a, b in zip(rows, rows_full, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and a.get("eval_loss") == pytest.approx(
            b.get("eval_loss"), abs=1e-6
        )
    assert json.loads(out)["eval_loss"] == s["eval_loss"]


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("moelab: error:") and match in err, err


def test_bad_input_exit_2_nothing_written(setup, tmp_path, capsys, monkeypatch):
    root, cfg, env = setup
    monkeypatch.setenv("MOELAB_CACHE_DIR", env["MOELAB_CACHE_DIR"])
    out = tmp_path / "out"
    base = ["train", "--config", str(cfg), "--out", str(out)]
    _one_line_error(capsys, base + ["--corpus", str(tmp_path / "missing.txt")], "does not exist")
    (tmp_path / "empty.txt").write_text("\n\n")
    _one_line_error(capsys, base + ["--corpus", str(tmp_path / "empty.txt")], "holds no text")
    (tmp_path / "d.jsonl").write_text('{"body": "hello there"}\n{"body": "general"}\n')
    _one_line_error(capsys, base + ["--corpus", str(tmp_path / "d.jsonl")], "'text' is not a field")
    _one_line_error(capsys, base + ["--set", "train.seq_len=512"], "exceeds model.max_seq_len")
    _one_line_error(capsys, base + ["--set", "model.vocab_size=512"], "does not match the byte tokenizer")
    _one_line_error(capsys, base + ["--set", "train.bogus=1"], "train has no field 'bogus'")
    _one_line_error(capsys, ["train", "--preset", "nope", "--out", str(out)], "unknown preset 'nope'")
    _one_line_error(
        capsys, ["train", "--config", str(tmp_path / "nope.json"), "--out", str(out)], "does not exist"
    )
    assert not out.exists()
    # a folder holding another run's config: refused, left as it was
    full = root / "full"
    before = {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()}
    _one_line_error(
        capsys,
        ["train", "--config", str(cfg), "--out", str(full), "--set", "train.lr=0.01"],
        "holds a run with a different config (train.lr",
    )
    assert before == {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()}


def test_cli_builds_the_run_config(setup):
    from moelab.cli import build_parser
    from moelab.train.cli import build_run

    root, cfg, _ = setup
    args = build_parser("train").parse_args(
        [
            "train",
            "--config",
            str(cfg),
            "--out",
            "x",
            "--flops",
            "1e12",
            "--set",
            "train.lr=2e-3",
            "--set",
            "model.top_k=2",
            "--seed",
            "7",
        ]
    )
    run = build_run(args)
    assert run.train.flops == 1e12 and run.train.tokens is None and run.train.lr == 2e-3
    assert run.model.top_k == 2 and run.train.seed == 7
    args = build_parser("train").parse_args(
        ["train", "--preset", "moe8-100k", "--tokens", "5e4", "--out", "x"]
    )
    run = build_run(args)
    assert run.train.tokens == 50000 and run.model.n_experts == 8


def test_yaml_config_reads_exponent_floats(tmp_path):
    from moelab.train.config import load_run_config

    (tmp_path / "r.yaml").write_text("model: moe8-100k\ntrain:\n  lr: 3e-3\n  tokens: 1000\n  seq_len: 32\n")
    run = load_run_config(tmp_path / "r.yaml")
    assert run.train.lr == 3e-3 and run.train.tokens == 1000
