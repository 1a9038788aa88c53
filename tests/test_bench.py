import json

import pytest

from moelab.cli import main

TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--n-kv-heads", "2", "--head-dim", "8",
        "--d-expert", "8", "--n-experts", "4", "--top-k", "2", "--vocab-size", "32"]  # fmt: skip


def test_bench_step_writes_moe_and_dense_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "step", *TINY, "--seq-len", "8", "--batch", "2", "--steps", "1", "--rounds", "1",
               "--peak-size", "64", "--json", str(out)])  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    (res,) = data["benchmarks"]
    assert res["matmul_peak_flops"] > 0
    for key in ("model", "dense"):
        m = res[key]
        assert m["tokens_per_s"] == pytest.approx(2 * 8 / m["step_s"])
        assert m["mfu"] == pytest.approx(m["flops_per_s"] / res["matmul_peak_flops"])
    assert res["model"]["active_params"] == res["dense"]["active_params"] + 16 * 4  # router aside, equal
    assert res["moe_dense_ratio"] == pytest.approx(res["model"]["step_s"] / res["dense"]["step_s"])
    assert "MoE / dense step time" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary file left behind


@pytest.mark.parametrize(
    "args", [["--steps", "0"], ["--preset", "nope"], ["--n-experts", "2", "--top-k", "3"]]
)
def test_bench_bad_input_is_exit_2(args, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "step", *args, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moelab: error:")
    assert not out.exists()


def test_bench_fit_and_sweep_reject_bad_counts(capsys):
    from moelab.cli import main

    assert main(["bench", "fit", "--bootstrap", "0"]) == 2
    assert main(["bench", "sweep", "--concurrency", "0"]) == 2
    assert "--concurrency must be >= 1" in capsys.readouterr().err
