"""`moelab train --mesh / --remat / --distributed`: a run on a device mesh (8 simulated CPU devices, see
conftest.py) is the unsharded run up to float rounding, resumes from its sharded checkpoints, keeps its run
id, and a real two-process JAX cluster trains the same run through `moelab train --distributed`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from moelab.cli import main
from moelab.parallel.placement import Placement
from moelab.train import run_training
from moelab.train.loop import init_state, resolve_mesh
from moelab.train.step import make_train_step
from tests._train_helpers import tiny_run, write_corpus

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5  # float32: sharded reductions add in another order


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MOELAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "moelab-cache"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The reference: the same run on one device (16 steps, eval and checkpoint every 8)."""
    root = tmp_path_factory.mktemp("mesh")
    run = tiny_run(write_corpus(root), tokens=16 * 8 * 16, log_every=4, eval_every=8, checkpoint_every=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOELAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "moelab-cache"))
        summary = run_training(run, root / "plain", progress=False)
    assert summary["status"] == "succeeded" and summary["steps"] == 16
    return run, root, summary


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same_rows(out: Path, ref: Path) -> None:
    rows, ref_rows = _rows(out), _rows(ref)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for a, b in zip(rows, ref_rows, strict=True):
        assert abs(a["loss"] - b["loss"]) < TOL and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
        assert ("eval_loss" in a) == ("eval_loss" in b)
        if "eval_loss" in a:
            assert abs(a["eval_loss"] - b["eval_loss"]) < TOL


def test_mesh_run_equals_unsharded_run(plain):
    run, root, ref = plain
    s = run_training(run, root / "de", progress=False, mesh="data=2,expert=2")
    assert s["status"] == "succeeded" and s["mesh"] == "data=2,expert=2" and s["remat"] == "none"
    assert abs(s["eval_loss"] - ref["eval_loss"]) < TOL
    _same_rows(root / "de", root / "plain")
    # an execution option, not semantics: the same config.json (hence the same run id)
    assert (root / "de" / "config.json").read_bytes() == (root / "plain" / "config.json").read_bytes()
    ckpts = sorted(p.name for p in (root / "de" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == ["16", "8"]


def test_interrupted_mesh_run_resumes_from_its_sharded_checkpoint(plain):
    """fsdp x expert x tensor with full remat, stopped after the step-8 checkpoint (Ctrl-C) and restarted."""
    run, root, ref = plain
    out, mesh = root / "fet", "fsdp=2,expert=2,tensor=2"

    def stop(step, total, text):
        if step >= 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(run, out, progress=stop, mesh=mesh, remat="full")
    assert json.loads((out / "summary.json").read_text())["status"] == "running"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["8"]
    s = run_training(run, out, progress=False, mesh=mesh, remat="full")
    assert s["status"] == "succeeded" and s["resumed_from"] == 8 and s["steps"] == 16
    assert abs(s["eval_loss"] - ref["eval_loss"]) < TOL
    _same_rows(out, root / "plain")


def test_compiled_step_follows_the_input_shardings(plain):
    """The jitted step is compiled for the shardings of its arguments: logical-axis shardings of the state
    (experts over ``expert``, d_model over ``fsdp``, heads/mlp over ``tensor``) and a batch split over the
    batch axes; the donated state comes back on the same shardings."""
    run, _, _ = plain
    mesh = resolve_mesh("fsdp=2,expert=2,tensor=2", run.train.batch_size)
    placement = Placement(mesh)
    graphdef, params, rest, opt_state, first_bad, tx = init_state(run, placement)
    state = (params, opt_state, first_bad)
    # remat "full" as in the resumed run above: the persistent compilation cache usually has this step
    step = make_train_step(
        graphdef, tx, run.model, mesh=mesh, remat="full", state_shardings=placement.shardings(state)
    )
    t = run.train
    batch = placement.batch(np.zeros((t.batch_size, t.seq_len + 1), np.int32))
    compiled = step.lower(*state, rest, batch, np.int32(0), np.float32(1e-3), np.int32(0)).compile()
    args, _ = compiled.input_shardings
    given = (*state, rest, batch)
    arrays = jax.tree.leaves(given)
    assert len(jax.tree.leaves(args[: len(given)])) == len(arrays)
    for want, got in zip(arrays, jax.tree.leaves(args[: len(given)]), strict=True):
        assert got.is_equivalent_to(want.sharding, want.ndim), (got, want.sharding)
    for want, got in zip(jax.tree.leaves(state), jax.tree.leaves(compiled.output_shardings[:3]), strict=True):
        assert got.is_equivalent_to(want.sharding, want.ndim)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(params)}
    assert any("expert" in s for s in specs) and any("tensor" in s for s in specs)
    assert any("fsdp" in s for s in specs)
    assert batch.sharding.spec[0] == ("fsdp", "expert")
    assert not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(opt_state) if x.ndim >= 2)


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("moelab: error:") and match in err, err


def test_bad_mesh_or_remat_is_a_one_line_error(plain, tmp_path, capsys):
    run, _, _ = plain
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(run.to_dict()))
    out = tmp_path / "out"
    base = ["train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    _one_line_error(capsys, base + ["--mesh", "data=2,bogus=4"], "mesh must look like 'data=2,expert=4'")
    _one_line_error(capsys, base + ["--mesh", "data=two"], "mesh axis data must be an integer")
    _one_line_error(capsys, base + ["--mesh", "data=16"], "needs 16 devices, only 8 available")
    _one_line_error(capsys, base + ["--mesh", "data=2,fsdp=3"], "train.batch_size=8 must be divisible")
    _one_line_error(capsys, base + ["--remat", "most"], "--remat must be one of none|minimal|full")
    _one_line_error(capsys, base + ["--process-id", "1"], "need --distributed")
    assert not out.exists()


def test_two_process_distributed_training(plain, tmp_path):
    """`moelab train --distributed` on a real two-process JAX cluster (2 CPU devices each, gloo collectives;
    default mesh data=4 over both) resumes the one-device run from its step-8 checkpoint (a checkpoint of
    another topology, read by both processes onto the new shardings) and ends with the same losses; process 0
    alone prints and writes."""
    run, root, ref = plain
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(run.to_dict()))
    out_dir = tmp_path / "out"
    shutil.copytree(root / "plain", out_dir)
    shutil.rmtree(out_dir / "checkpoints" / "16")
    summary = json.loads((out_dir / "summary.json").read_text())
    (out_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs, files = [], []
    for pid in range(2):
        env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            MOELAB_COORDINATOR=f"localhost:{port}",
            MOELAB_NUM_PROCESSES="2",
            MOELAB_PROCESS_ID=str(pid),
            PYTHONPATH=str(REPO),
        )
        cmd = [sys.executable, "-m", "moelab", "train", "--distributed", "--config", str(cfg),
               "--out", str(out_dir), "--no-progress"]
        files += [open(tmp_path / f"{pid}.{name}", "w") for name in ("out", "err")]  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, env=env, stdout=files[-2], stderr=files[-1], text=True))
    # the first failure ends the test at once: a failed process waits in JAX's shutdown barrier and its peer
    # on a collective, each until killed
    deadline = time.monotonic() + 180
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            failed = any(p.poll() not in (None, 0) for p in procs) or any(
                "Traceback" in (tmp_path / f"{i}.err").read_text() for i in range(2)
            )
            if failed:
                time.sleep(1)  # let the traceback be written out
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
    errs = [f"process {i} exit {p.returncode}: {(tmp_path / f'{i}.err').read_text()[-2000:]}"
            for i, p in enumerate(procs)]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(errs)
    outs = [
        [line for line in (tmp_path / f"{pid}.out").read_text().splitlines() if line.startswith("{")]
        for pid in range(2)
    ]
    assert len(outs[0]) == 1 and outs[1] == []  # one summary line, from process 0
    s = json.loads((out_dir / "summary.json").read_text())
    assert s["status"] == "succeeded" and s["mesh"] == "data=4" and s["resumed_from"] == 8
    assert json.loads(outs[0][0])["eval_loss"] == s["eval_loss"]
    assert abs(s["eval_loss"] - ref["eval_loss"]) < TOL
    _same_rows(out_dir, root / "plain")
    assert sorted(p.name for p in (out_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["16", "8"]
