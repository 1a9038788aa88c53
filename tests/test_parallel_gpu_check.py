"""scripts/gpu_check.py runs end to end on tiny shapes (``--smoke``) on the CPU."""

from __future__ import annotations

import json
import math

from moelab.accounting import param_counts, train_flops_per_token
from tests._scripts import script_module


def _load():
    return script_module("gpu_check")


def test_gpu_check_smoke(tmp_path, capsys):
    mod = _load()
    out = tmp_path / "gpu_check.json"
    assert mod.main(["--smoke", "--steps", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert json.loads(printed.strip().splitlines()[-1]) == result
    assert result["dispatch"] == "dropless" and result["dtype"] == "bfloat16" and result["steps_timed"] == 3
    cfg = mod.model_config(mod.parse_args(["--smoke"]), None)
    tokens = result["batch"] * result["seq"]
    assert result["flops_per_step"] == train_flops_per_token(cfg, result["seq"]) * tokens
    assert math.isclose(result["tokens_per_s"], result["batch"] * result["seq"] / result["step_s"])
    assert math.isclose(result["mfu_vs_measured"],
                        result["model_tflops_per_s"] / result["measured_matmul_tflops_per_s"])
    assert result["mfu_vs_measured"] > 0 and math.isfinite(result["loss_last"])
    assert "MFU:" in printed and "tokens/s" in printed


def test_gpu_check_sizes_the_model_to_the_card():
    mod = _load()
    args = mod.parse_args([])
    h100 = mod.model_config(args, 80e9)
    h200 = mod.model_config(args, 141e9)
    assert h100.d_model == 6400 and h100.d_expert == 18304 and h100.vocab_size == 128512
    assert h100.dispatch == "dropless" and h100.param_dtype == "bfloat16"
    for cfg, hbm in ((h100, 80e9), (h200, 141e9)):
        weights = 4 * param_counts(cfg).total_with_embedding  # bf16 weights + bf16 gradients
        assert cfg.n_layers % 2 == 0 and cfg.n_layers >= 2 and weights <= 0.6 * hbm
        bigger = cfg.replace(n_layers=cfg.n_layers + 2, n_experts=min(16, 2 * cfg.n_experts))
        assert 4 * param_counts(bigger).total_with_embedding > 0.6 * hbm  # the largest that fits
    assert h200.n_experts == 16 and h100.n_experts < 16


def test_gpu_check_strategy_table_smoke(tmp_path):
    """--strategies: every dispatch strategy timed in bf16 through the production step (tiny shapes, CPU)."""
    mod = _load()
    out = tmp_path / "strategies.json"
    assert mod.main(["--smoke", "--strategies", "--steps", "3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dtype"] == "bfloat16" and res["dense"]["step_s"] > 0
    assert res["ragged_dot_grouped"] is False and res["auto"] == "blocksparse"  # CPU
    for row in res["shapes"].values():
        for strategy in ("capacity", "dropless", "blocksparse"):
            assert row[strategy]["step_s"] > 0 and math.isfinite(row[strategy]["loss"])
