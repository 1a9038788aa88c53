"""Live trackers (moelab.train.trackers): `moelab train --tracker tensorboard --tracker wandb` writes every
metric of metrics.jsonl, with the run's config as hyper-parameters, and the files are read back here with
readers of their own formats (TFRecord event files; W&B's offline run log) rather than the writers' code. A
sweep's trial passes the sweep name on as the group."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from moelab.cli import main
from moelab.errors import ConfigError
from moelab.sweep.spec import SweepSpec
from moelab.sweep.trial import execute_trial
from moelab.train.metrics import read_metrics
from moelab.train.trackers import flat_config, tracker_names
from tests._train_helpers import TINY, tiny_run, write_corpus


def read_events(folder: Path) -> list:
    """Every Event of the TFRecord files in ``folder`` (8-byte length, 4-byte CRC, data, 4-byte CRC)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            events.append(event)
            i += 12 + n + 4
    return events


def scalars(events) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def hparams(events) -> dict[str, object]:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    for e in events:
        for v in e.summary.value:
            if v.tag == "_hparams_/session_start_info":
                data = HParamsPluginData.FromString(v.metadata.plugin_data.content)
                return {k: _value(x) for k, x in data.session_start_info.hparams.items()}
    return {}


def _value(x):
    kind = x.WhichOneof("kind")
    return {"number_value": x.number_value, "string_value": x.string_value, "bool_value": x.bool_value}[kind]


def read_wandb(path: Path) -> list:
    """The protobuf records of a W&B offline run log (LevelDB-log framing: a 7-byte file header, 32 KiB
    blocks, records cut into FULL/FIRST/MIDDLE/LAST pieces behind 7-byte headers)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
        else:
            break
    return [Record.FromString(r) for r in records]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers")
    run = tiny_run(write_corpus(root), tokens=16 * 8 * 20, log_every=5, eval_every=10, checkpoint_every=10)
    cfg = root / "run.json"
    cfg.write_text(json.dumps(run.to_dict()))
    out = root / "run"
    argv = ["train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    assert main([*argv, "--tracker", "tensorboard", "--tracker", "wandb"]) == 0
    return run, out


def test_tensorboard_event_file_holds_every_metric_and_the_config(tracked):
    run, out = tracked
    events = read_events(out / "tensorboard")
    got = scalars(events)
    rows = read_metrics(out / "metrics.jsonl")
    assert rows
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and value is not None:
                assert got[key][row["step"]] == pytest.approx(value, rel=1e-6, abs=1e-12), (key, row["step"])
    assert set(got["eval_loss"]) == {10, 20} and set(got["loss"]) == {5, 10, 15, 20}
    hp = hparams(events)
    assert hp["model.d_model"] == run.model.d_model and hp["train.lr"] == pytest.approx(run.train.lr)
    assert hp["data.corpus"] == run.data.corpus and hp["run"] == out.name


def test_wandb_offline_run_holds_every_metric_the_config_and_the_name(tracked):
    run, out = tracked
    (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb(log)
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[int(items["_step"])] = items
    for row in read_metrics(out / "metrics.jsonl"):
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                assert history[row["step"]][key] == pytest.approx(value, rel=1e-12), (key, row["step"])
    info = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    given = {i.key: json.loads(i.value_json) for i in info.config.update}
    assert given["model"]["d_model"] == run.model.d_model and given["train"]["lr"] == run.train.lr
    assert info.display_name == out.name and info.project == "moelab"


def test_a_sweep_trial_passes_the_sweep_name_as_group(tmp_path):
    # the fixture's model and shapes: the compiled step comes from the persistent compilation cache
    spec = SweepSpec.from_dict(
        {"name": "tracked", "model": TINY.to_dict(), "tracker": "tensorboard",
         "data": {"corpus": str(write_corpus(tmp_path)), "val_fraction": 0.2},
         "train": {"seq_len": 16, "batch_size": 8, "eval_tokens": 256, "checkpoint_every": 1000},
         "axes": {"tokens": [16 * 8 * 5]}}
    )  # fmt: skip
    assert spec.tracker == ("tensorboard",)
    (trial,) = spec.trials()
    summary = execute_trial(trial.run.to_dict(), str(tmp_path / trial.run_id), None, spec.tracker, spec.name)
    assert summary["status"] == "succeeded"
    hp = hparams(read_events(tmp_path / trial.run_id / "tensorboard"))
    assert hp["sweep"] == "tracked" and hp["run"] == trial.run_id


def test_tracker_names_are_checked_in_one_line(tmp_path, capsys):
    assert tracker_names(None) == () and tracker_names("tensorboard,wandb") == ("tensorboard", "wandb")
    with pytest.raises(ConfigError, match=r"--tracker must be one of tensorboard\|wandb, got 'tensorbord'"):
        tracker_names(["tensorbord"])
    with pytest.raises(ConfigError, match="tracker must be one of"):
        SweepSpec.from_dict({"name": "x", "tracker": ["mlflow"], "axes": {"active_params": [2e4]}})
    assert main(["train", "--preset", "dense-100k", "--out", str(tmp_path / "r"), "--tracker", "tb"]) == 2
    assert "--tracker must be one of" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert flat_config({"a": {"b": 1, "c": None, "d": [1, 2]}}) == {"a.b": 1, "a.c": "None", "a.d": "[1, 2]"}
