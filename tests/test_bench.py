import functools
import json

import jax
import jax.numpy as jnp
import pytest

from moelab.bench import bench_dispatch, floor_dispatch
from moelab.cli import main
from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.model.dispatch import STRATEGIES, blocksparse, reference

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


def test_bench_dispatch_times_every_strategy_against_one_dense_model():
    base = ModelConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=8, vocab_size=32,
                       max_seq_len=8)  # fmt: skip
    res = bench_dispatch(base, ((4, 1, 16), (8, 2, 8)), 8, 2, 1, 1, (64,), max_flops_ratio=1.5)
    dense = res["dense"]
    assert dense["step_s"] > 0
    assert dense["mfu"] == pytest.approx(dense["flops_per_s"] / res["matmul_peak_flops"])
    for name, e in (("E4-top1", 4), ("E8-top2", 8)):
        row = res["shapes"][name]
        for strategy in ("capacity", "blocksparse"):
            assert row[strategy]["ratio"] == pytest.approx(row[strategy]["step_s"] / dense["step_s"])
            assert row[strategy]["active_params"] == dense["active_params"] + 16 * e  # router aside, equal
        # capacity pads to 1.25x the expert rows; CPU ragged_dot multiplies every row by every expert, which
        # exceeds the 1.5x limit: compiled and counted, not timed
        assert 1.0 < row["capacity"]["xla_flops_ratio"] < 1.5
        assert row["dropless"]["step_s"] is None and row["dropless"]["xla_flops_ratio"] > 1.5
        # the floor: the dense FFN's products over the sorted rows, timed like the strategies
        assert row["floor"]["ratio"] == pytest.approx(row["floor"]["step_s"] / dense["step_s"])
        assert 1.0 <= row["floor"]["xla_flops_ratio"] < row["capacity"]["xla_flops_ratio"]
    # the floor's swap ended with the compilation: the model traces blocksparse again
    assert STRATEGIES["blocksparse"] is blocksparse.dispatch
    with pytest.raises(MoelabError, match="one activated width"):
        bench_dispatch(base, ((4, 1, 16), (8, 2, 16)), 8, 2, 1, 1, (64,))


@pytest.mark.parametrize(
    "args",
    [
        ["--steps", "0"],
        ["--target", "dispatch", "--max-flops-ratio", "0"],
        ["--preset", "nope"],
        ["--n-experts", "2", "--top-k", "3"],
    ],
)
def test_bench_bad_input_is_exit_2(args, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "step", *args, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moelab: error:")
    assert not out.exists()


def test_bench_fit_and_sweep_reject_bad_counts(capsys):
    assert main(["bench", "fit", "--bootstrap", "0"]) == 2
    assert main(["bench", "sweep", "--concurrency", "0"]) == 2
    assert "--concurrency must be >= 1" in capsys.readouterr().err


def test_floor_dispatch_is_every_dispatch_when_all_rows_go_to_expert_0():
    n, d, f, e, k = 12, 8, 6, 4, 2
    ks = jax.random.split(jax.random.key(3), 6)
    x, proj = jax.random.normal(ks[0], (n, d)), jax.random.normal(ks[1], (n, d))
    top_idx = jnp.zeros((n, k), jnp.int32)
    top_w = jax.random.uniform(ks[2], (n, k))
    ws = [jax.random.normal(kk, (e, d, f) if i < 2 else (e, f, d)) / 3 for i, kk in enumerate(ks[3:])]

    def loss(fn):
        def inner(x, top_w, *ws):
            y, _, _ = fn(x, top_idx, top_w, *ws, capacity_factor=None, overflow=None, key=None)
            return jnp.sum(y * proj)

        return jax.value_and_grad(inner, argnums=(0, 1, 2, 3, 4))(x, top_w, *ws)

    (v, g), (v_ref, g_ref) = loss(floor_dispatch), loss(functools.partial(reference.dispatch, dropless=True))
    assert abs(float(v - v_ref)) <= 1e-4
    for a, b in zip(g, g_ref, strict=True):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5
