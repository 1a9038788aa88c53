"""Faults a run survives, on real processes and real files (docs/reliability.md lists each with its promise).

A tiny MoE is trained once without interruption (the reference) and once interrupted after its step-40
checkpoint; the faults are then made on copies of the interrupted folder and each rerun (a real `moelab train`
process) must end equal to the reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from moelab.parallel.placement import Placement
from moelab.train import run_training
from moelab.train.checkpoint import Checkpointer
from moelab.train.loop import init_state
from moelab.train.metrics import read_metrics
from tests._train_helpers import tiny_run, write_corpus

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 60, 20


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(root, config file, env, reference summary, folder interrupted after its step-40 checkpoint)."""
    root = tmp_path_factory.mktemp("faults")
    corpus = write_corpus(root)
    run = tiny_run(corpus, tokens=16 * 8 * STEPS, log_every=5, eval_every=STEPS, checkpoint_every=EVERY)
    cfg = root / "run.json"
    cfg.write_text(json.dumps(run.to_dict()))
    env = {**os.environ, "MOELAB_CACHE_DIR": str(root / "cache"), "PYTHONPATH": str(REPO)}
    ref = run_training(run, root / "reference", progress=False)

    def stop(step, total, text):
        if step > 2 * EVERY:
            raise KeyboardInterrupt  # as a terminal's Ctrl-C: the run stays resumable

    with pytest.raises(KeyboardInterrupt):
        run_training(run, root / "interrupted", progress=stop)
    assert _steps(root / "interrupted") == [EVERY, 2 * EVERY]
    return root, cfg, env, ref, root / "interrupted"


def _steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def _train(cfg: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "moelab", "train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _largest_data_file(ckpt: Path) -> Path:
    return max((p for p in (ckpt / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 10, len(data) - 16, len(data) // 10):  # a byte in every tenth of the file
        data[i] ^= 0x55
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_meta(ckpt: Path) -> None:
    (ckpt / "meta" / "metadata").write_text('{"step": 4')


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda c: _flip(_largest_data_file(c)), id="flipped-bytes"),
        pytest.param(lambda c: _truncate(_largest_data_file(c)), id="truncated"),
        pytest.param(_garble_meta, id="garbled-meta"),
    ],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(runs, tmp_path, damage):
    """Restore skips a damaged newest checkpoint (moved aside, one line says so) and returns the previous one,
    bit for bit the state the uninterrupted run saved at that step."""
    root, *_ = runs
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(root / "interrupted" / "checkpoints", ckpts)
    damage(ckpts / str(2 * EVERY))
    run = tiny_run(write_corpus(tmp_path))
    _, params, _, opt_state, first_bad, _ = init_state(run, Placement())
    like = (params, opt_state, first_bad)
    lines: list[str] = []
    ckpt = Checkpointer(ckpts)
    try:
        state, meta = ckpt.restore_latest(like, log=lines.append)
    finally:
        ckpt.close()
    assert meta["step"] == EVERY
    assert len(lines) == 1 and f"checkpoint step {2 * EVERY} is unreadable" in lines[0], lines
    assert f"falling back to step {EVERY}" in lines[0]
    assert [s["step"] for s in ckpt.set_aside] == [2 * EVERY]
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == [str(EVERY)]
    assert any(p.name.startswith(f"unreadable-{2 * EVERY}-") for p in ckpts.iterdir())  # kept, aside
    ref = Checkpointer(root / "reference" / "checkpoints")
    try:
        # the reference run keeps its last two checkpoints (40, 60): compare against the untouched step 40
        want, _ = ref.restore(2 * EVERY, like)
    finally:
        ref.close()
    ok = Checkpointer(root / "interrupted" / "checkpoints")
    try:
        want_prev, _ = ok.restore(EVERY, like)
    finally:
        ok.close()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want_prev), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True)
    )  # it really is the older state


def test_rerun_with_a_corrupt_latest_checkpoint_resumes_from_the_previous_and_ends_equal(runs, tmp_path):
    root, cfg, env, ref, interrupted = runs
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    _flip(_largest_data_file(out / "checkpoints" / str(2 * EVERY)))
    done = _train(cfg, out, env)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "unreadable" in line]
    assert len(said) == 1 and f"falling back to step {EVERY}" in said[0], done.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "succeeded" and s["resumed_from"] == EVERY and s["steps"] == STEPS
    assert [x["step"] for x in s["checkpoints_set_aside"]] == [2 * EVERY]
    assert abs(s["eval_loss"] - ref["eval_loss"]) < 1e-6
    rows, want = read_metrics(out / "metrics.jsonl"), read_metrics(root / "reference" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in want]
    assert all(abs(a["loss"] - b["loss"]) < 1e-6 for a, b in zip(rows, want, strict=True))


# ---------------------------------------------------------------- disk full
DISK_SCRIPT = r"""
set -u
D=$(mktemp -d)
mount -t tmpfs -o size=${FIT_KB}k tmpfs "$D"
train() {  # phase, out folder, extra flags
  local phase=$1 out=$2; shift 2
  "$PY" -m moelab train --config "$CFG" --out "$out" --no-progress "$@" >"$OUT/$phase.out" 2>"$OUT/$phase.err"
  echo $? >"$OUT/$phase.rc"
}
snap() { cp -a "$1" "$OUT/$2"; ls "$1/checkpoints" >"$OUT/$2.ckpts"; }
fill() { dd if=/dev/zero of="$D/$1" bs=4096 2>/dev/null; sync; }

# A: the disk holds one checkpoint, not two: the save of the second one fails
train A "$D/run"; snap "$D/run" A
# B: the disk is completely full when the run is started again
fill fillB; train B "$D/run"; snap "$D/run" B
# C: space freed: the same command resumes
rm "$D/fillB"; mount -o remount,size=64m "$D"; train C "$D/run"; snap "$D/run" C

# D: the disk fills while metrics.jsonl is appended (a line per step, one checkpoint at the end): the trainer
# is paused once step 10 is logged, the disk filled, the trainer continued
"$PY" -m moelab train --config "$CFG" --out "$D/run2" --no-progress --set train.log_every=1 \
  --set train.checkpoint_every=60 >"$OUT/D.out" 2>"$OUT/D.err" &
pid=$!
logged() { tail -n 1 "$D/run2/metrics.jsonl" 2>/dev/null | sed -n 's/^{"step": \([0-9]*\),.*/\1/p'; }
while [ "$(logged)" = "" ] || [ "$(logged)" -lt 10 ]; do kill -0 $pid 2>/dev/null || break; sleep 0.01; done
kill -STOP $pid; echo "$(logged)" >"$OUT/D.paused_at"; fill fillD; kill -CONT $pid
wait $pid; echo $? >"$OUT/D.rc"; snap "$D/run2" D
rm "$D/fillD"
train E "$D/run2" --set train.log_every=1 --set train.checkpoint_every=60; snap "$D/run2" E
umount "$D"
"""


def _unshare() -> list[str]:
    """A private mount namespace to mount a small tmpfs in: as root directly, otherwise inside a user
    namespace (unprivileged user namespaces: most Linux machines and CI runners)."""
    exe = shutil.which("unshare")
    assert exe, "util-linux's unshare is needed to mount a small tmpfs (apt-get install util-linux)"
    return [exe, "--mount"] if os.geteuid() == 0 else [exe, "--user", "--map-root-user", "--mount"]


def _one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("WARNING:", "I0000", "W0000"))]
    assert len(lines) == 1 and lines[0].startswith("moelab: error: disk full"), err
    return lines[0]


def test_disk_full_while_checkpointing_logging_or_starting(runs, tmp_path):
    """A real small tmpfs fills up (i) while a checkpoint is saved, (ii) before a run restarts, (iii) while
    metrics.jsonl is appended. Each time: one line, exit 1, the last good checkpoint intact and readable;
    with space again the same command resumes from it and ends equal to the uninterrupted run."""
    root, cfg, env, ref, _ = runs
    ckpt_kb = sum(p.stat().st_size for p in (root / "reference" / "checkpoints" / "60").rglob("*")) // 1024
    out = tmp_path / "out"
    out.mkdir()
    env = {**env, "PY": sys.executable, "CFG": str(cfg), "OUT": str(out), "FIT_KB": str(int(1.5 * ckpt_kb))}
    done = subprocess.run([*_unshare(), "bash", "-c", DISK_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    def result(phase):
        rc = int((out / f"{phase}.rc").read_text())
        return rc, (out / f"{phase}.err").read_text(), json.loads((out / phase / "summary.json").read_text())

    def checkpoints(phase):
        return sorted(int(x) for x in (out / f"{phase}.ckpts").read_text().split() if x.isdigit())

    # (i) the step-40 save fails: the run says so in one line, the step-20 checkpoint is intact
    rc, err, s = result("A")
    line = _one_error_line(err)
    assert rc == 1 and "checkpoints/40" in line, err
    assert s["status"] == "failed" and s["error"].startswith("disk full"), s
    assert checkpoints("A") == [EVERY]
    # (ii) full before the restart: one line naming the file, nothing else changed
    rc, err, s = result("B")
    assert rc == 1 and "config.json" in _one_error_line(err), err
    assert s["status"] == "failed" and checkpoints("B") == [EVERY]
    # (iii) room again: resumed from step 20, equal to the uninterrupted run
    rc, err, s = result("C")
    assert rc == 0, err
    assert (
        s["status"] == "succeeded"
        and s["resumed_from"] == EVERY
        and abs(s["eval_loss"] - ref["eval_loss"]) < 1e-6
    )
    # metrics: the append fails, the summary cannot be rewritten either and stays `running` (resumable)
    rc, err, s = result("D")
    paused_at = int((out / "D.paused_at").read_text())
    assert rc == 1 and "metrics.jsonl" in _one_error_line(err), err
    assert s["status"] == "running" and checkpoints("D") == []
    rows = read_metrics(out / "D" / "metrics.jsonl")  # the torn last line, if any, is tolerated
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and paused_at <= rows[-1][
        "step"
    ] < STEPS
    rc, err, s = result("E")
    assert rc == 0, err
    assert s["status"] == "succeeded" and abs(s["eval_loss"] - ref["eval_loss"]) < 1e-6
    steps = [r["step"] for r in read_metrics(out / "E" / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, STEPS + 1))


# ---------------------------------------------------------------- a damaged runs.parquet
def test_a_damaged_runs_parquet_is_rebuilt_from_the_run_folders_and_nothing_retrained(tmp_path):
    import warnings

    import moelab.results
    from moelab.sweep.spec import SweepSpec
    from moelab.sweep.store import write_table
    from tests._sweep_helpers import fake_training

    spec_path = tmp_path / "tbl.yaml"
    spec_path.write_text(json.dumps({
        "name": "tbl", "model": {"vocab_size": 256, "max_seq_len": 64},
        "train": {"seq_len": 32, "batch_size": 4, "checkpoint_every": 5},
        "axes": {"active_params": [2e4, 3e4, 4e4], "tokens": [32 * 4 * 10]},
    }))  # fmt: skip
    sweep = tmp_path / "r" / "tbl"
    for trial in SweepSpec.from_file(spec_path).trials():  # finished run folders (the stand-in trainer's)
        fake_training(trial.run, sweep / "runs" / trial.run_id)
    table = write_table(sweep)
    want = moelab.results.load(sweep).sort_values("run_id").reset_index(drop=True)
    assert len(want) == 3 and want["loss"].notna().all()
    def trained():  # what training writes (the driver may add its own metadata, e.g. axes.json)
        keep = ("config.json", "summary.json", "metrics.jsonl", "attempts.jsonl")
        files = [p for p in (sweep / "runs").rglob("*") if p.name in keep or "checkpoints" in p.parts]
        return {p: p.stat().st_mtime_ns for p in files}

    stamps = trained()

    def same_table():
        got = moelab.results.load(table).sort_values("run_id").reset_index(drop=True)
        return list(got["run_id"]) == list(want["run_id"]) and list(got["loss"]) == list(want["loss"])

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env["MOELAB_SWEEP_TRAINER"] = "tests._sweep_helpers:fake_training"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])  # cut short, as by a crash
    with pytest.warns(UserWarning, match="unreadable.*--rebuild"):  # readers fall back to the run folders
        assert same_table()
    done = subprocess.run([sys.executable, "-m", "moelab", "sweep", "status", str(sweep), "--rebuild"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "rebuilt" in done.stderr, done.stdout + done.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_table()

    table.write_bytes(b"PAR1 not a parquet file")  # garbage: the next `sweep run` rewrites it, trains nothing
    cmd = [sys.executable, "-m", "moelab", "sweep", "run", str(spec_path), "--results", str(tmp_path / "r"),
           "--no-live"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "nothing to run" in done.stderr, done.stdout + done.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_table()
    assert stamps == trained()  # nothing retrained, no run's files rewritten


# ---------------------------------------------------------------- a worker killed by the kernel's OOM killer
def _memory_root() -> tuple[Path, str] | None:
    """(cgroup folder to make a group in, its limit file): cgroup v1's memory controller, or cgroup v2's root
    when it hands the memory controller to its children; None when neither is writable (not root)."""
    v1, v2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
    if (v1 / "cgroup.procs").is_file() and os.access(v1, os.W_OK):
        return v1, "memory.limit_in_bytes"
    control = v2 / "cgroup.subtree_control"
    if control.is_file() and "memory" in control.read_text().split() and os.access(v2, os.W_OK):
        return v2, "memory.max"
    return None


@pytest.fixture
def memory_cgroup():
    """A memory cgroup limited to 64 MiB (v1 or v2; needs root)."""
    found = _memory_root()
    if found is None:
        pytest.skip("no writable memory cgroup (needs root) to OOM-kill a worker in")
    root, limit_file = found
    group = root / f"moelab-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / limit_file).write_text(str(64 * 2**20))
        if limit_file == "memory.max" and (group / "memory.swap.max").is_file():
            (group / "memory.swap.max").write_text("0")  # past the limit means killed, not swapped
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.5)
        group.rmdir()


@pytest.mark.slow  # two sweep drivers with an embedded Ray each
def test_an_oom_killed_trial_is_failed_with_the_reason_the_sweep_goes_on_and_rerun_failed_retries(
    tmp_path, memory_cgroup
):
    from moelab.sweep.spec import SweepSpec

    spec_path = tmp_path / "oom.yaml"
    spec_path.write_text(json.dumps({
        "name": "oom", "model": {"vocab_size": 256, "max_seq_len": 64},
        "train": {"seq_len": 32, "batch_size": 4, "checkpoint_every": 5},
        "axes": {"active_params": [2e4], "tokens": [32 * 4 * 10]}, "seeds": [0, 7],
        "resources": {"cpus": 1}, "max_concurrency": 1, "retries": 1,
    }))  # fmt: skip
    trials = SweepSpec.from_file(spec_path).trials()
    runs = {t.run.train.seed: tmp_path / "r" / "oom" / "runs" / t.run_id for t in trials}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env["MOELAB_SWEEP_TRAINER"] = "tests._sweep_helpers:fake_training"
    cmd = [sys.executable, "-m", "moelab", "sweep", "run", str(spec_path), "--results", str(tmp_path / "r"),
           "--no-live", "--num-cpus", "1"]  # fmt: skip

    done = subprocess.run(cmd, env={**env, "MOELAB_FAKE_OOM_CGROUP": str(memory_cgroup)}, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 1 and "1 succeeded, 1 failed" in log, log
    ok, oom = (json.loads((runs[s] / "summary.json").read_text()) for s in (0, 7))
    assert ok["status"] == "succeeded"  # the sweep went on
    assert oom["status"] == "failed", oom
    assert "out of memory: the kernel's OOM killer" in oom["error"], oom["error"]
    assert len((runs[7] / "attempts.jsonl").read_text().splitlines()) == 2  # the first try and Ray's retry
    if (memory_cgroup / "memory.failcnt").is_file():  # the limit was really hit
        assert int((memory_cgroup / "memory.failcnt").read_text()) > 0
    else:
        assert "oom_kill 0" not in (memory_cgroup / "memory.events").read_text()

    again = subprocess.run([*cmd, "--rerun-failed"], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    log = again.stdout + again.stderr
    assert again.returncode == 0 and "1 succeeded, 0 failed" in log, log
    assert json.loads((runs[7] / "summary.json").read_text())["status"] == "succeeded"
    (kept,) = (tmp_path / "r" / "oom" / "failed").iterdir()  # the failed attempt is kept aside
    assert json.loads((kept / "summary.json").read_text())["status"] == "failed"
