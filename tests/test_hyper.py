"""analysis.hyper (B_crit(L), C_min, LR x batch cell optima, power laws, the plan's recommendation) and the
sweep axes that build LR x batch grids."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import hyper
from moelab.errors import ConfigError, MoelabError
from moelab.sweep.spec import SweepSpec
from moelab.train.optim import expert_lr_ratio

SEQ = 64


def _surface(cells, lrs, batches, *, noise=0.0, seed=0):
    """Runs on a loss surface that is quadratic in (log lr, log B) with a known optimum per cell."""
    rng = np.random.default_rng(seed)
    rows = []
    for cell in cells:
        x0, y0 = np.log(cell["eta"]), np.log(cell["B"])
        for lr in lrs:
            for b in batches:
                x, y = np.log(lr) - x0, np.log(b * SEQ) - y0
                loss = 2.0 + 0.05 * x * x + 0.03 * y * y + 0.01 * x * y + noise * rng.normal()
                rows.append(
                    {"n_experts": cell["E"], "active_params": cell["N"], "tokens": cell["D"],
                     "flops": cell["C"], "lr": lr, "batch_size": b, "seq_len": SEQ, "loss": loss}
                )  # fmt: skip
    return pd.DataFrame(rows)


def _cells(k_eta=0.5, a_eta=-0.2, k_B=0.3, a_B=0.33, a_E=-0.1):
    out = []
    for E in (1, 8):
        for C in (1e10, 1e11, 1e12):
            N = 0.1 * C**0.5
            out.append({"E": E, "N": N, "D": C / (6 * N), "C": C,
                        "eta": k_eta * C**a_eta * E**a_E, "B": k_B * C**a_B})  # fmt: skip
    return out


LRS = [1e-3, 3e-3, 1e-2, 3e-2]
BATCHES = [4, 8, 16, 32, 64]


def test_cell_optima_recover_a_known_surface_and_the_laws_its_exponents():
    cells = _cells()
    opt = hyper.cell_optima(_surface(cells, LRS, BATCHES), n_boot=20)
    t = opt.table.sort_values(["n_experts", "active_params"]).reset_index(drop=True)
    want = sorted(cells, key=lambda c: (c["E"], c["N"]))
    np.testing.assert_allclose(t["eta_opt"], [c["eta"] for c in want], rtol=1e-6)
    np.testing.assert_allclose(t["B_opt"], [c["B"] for c in want], rtol=1e-6)
    assert t["inside_lr"].all() and t["inside_B"].all() and (t["kind"] == "lr x batch").all()
    laws, notes = hyper.fit_hyper_laws(opt)
    assert not notes
    assert laws["B_opt(C)"].params["a"] == pytest.approx(0.33, abs=0.01)
    # eta = 0.5 C^-0.2 E^-0.1: the (N, E) law is exact, and the C law's slope too (E shifts both alike)
    assert laws["eta_opt(N, E)"].params["a_N"] == pytest.approx(-0.4, abs=1e-6)  # N = 1e-1 C^0.5 here
    assert laws["eta_opt(N, E)"].params["a_E"] == pytest.approx(-0.1, abs=1e-6)
    assert laws["eta_opt(C)"].params["a"] == pytest.approx(-0.2, abs=1e-6)


def test_noisy_cells_give_intervals_that_mostly_cover_the_truth():
    # residual bootstrap of 6 cells: 95% intervals covered the true exponents in 85-93% of 30 simulations
    covered = []
    for seed in range(10):
        opt = hyper.cell_optima(
            _surface(_cells(), LRS, BATCHES, noise=0.002, seed=seed), n_boot=100, seed=seed
        )
        laws, _ = hyper.fit_hyper_laws(opt)
        (lo, hi), (elo, ehi) = laws["B_opt(C)"].intervals["a"], laws["eta_opt(C)"].intervals["a"]
        assert hi - lo < 0.1 and ehi - elo < 0.05
        covered += [lo < 0.33 < hi, elo < -0.2 < ehi]
    assert np.mean(covered) >= 0.75
    point, plo, phi = laws["eta_opt(C)"].predict(np.array([1e11]))
    assert plo[0] < point[0] < phi[0]


def test_cells_with_the_optimum_outside_the_grid_are_left_out_with_a_note():
    cells = _cells()
    cells[0]["eta"] = 1.0  # far above every rate tried
    opt = hyper.cell_optima(_surface(cells, LRS, BATCHES), n_boot=5)
    laws, notes = hyper.fit_hyper_laws(opt)
    assert (~opt.table["inside_lr"]).sum() == 1
    assert any("outside the rates tried" in n for n in notes)
    assert laws["eta_opt(C)"].n_points == len(cells) - 1
    one_batch = hyper.cell_optima(_surface(cells[1:2], LRS, [16]), n_boot=5).table
    assert one_batch["kind"].tolist() == ["lr only"] and one_batch["B_opt"].tolist() == [16 * SEQ]
    with pytest.raises(MoelabError, match="lr"):
        hyper.cell_optima(pd.DataFrame({"loss": [1.0]}))


def test_bcrit_fit_recovers_kaplan_form_and_c_min():
    rng = np.random.default_rng(0)
    B_star, alpha = 3e3, 0.25
    curves = {}
    for r in range(6):
        loss = np.linspace(3.0 - 0.1 * r, 1.5, 30)
        b = B_star * loss ** (-1 / alpha) * np.exp(0.05 * rng.normal(size=loss.size))
        curves[f"run{r}"] = pd.DataFrame({"step": np.arange(1, 31) * 10, "loss": loss, "b_simple": b})
    curves["no-noise"] = pd.DataFrame({"step": [10], "loss": [2.0]})  # a run without the noise columns
    pts = hyper.noise_points(curves, skip_frac=0.2)
    assert set(pts["run_id"]) == {f"run{r}" for r in range(6)} and pts["step"].min() > 0.2 * 300
    law = hyper.fit_bcrit(pts, n_boot=100)
    p = hyper.bcrit_params(law)
    assert p["alpha_B"] == pytest.approx(alpha, rel=0.05) and p["B_star"] == pytest.approx(B_star, rel=0.1)
    lo, hi = p["alpha_B_interval"]
    assert lo < alpha < hi
    runs = pd.DataFrame({"flops": [1e12, 1e12], "batch_size": [8, 64], "seq_len": [SEQ, SEQ],
                         "train_loss": [2.0, 2.0]})  # fmt: skip
    crit = law.predict(np.array([2.0]))[0][0]
    np.testing.assert_allclose(hyper.c_min(runs, law), 1e12 / (1 + np.array([8, 64]) * SEQ / crit))
    with pytest.raises(MoelabError, match=">= 2 runs"):
        hyper.fit_bcrit(pts[pts["run_id"] == "run0"])


def test_recommendation_warns_on_extrapolation_and_follows_the_expert_rule():
    laws, _ = hyper.fit_hyper_laws(hyper.cell_optima(_surface(_cells(a_E=0.0), LRS, BATCHES), n_boot=20))
    ratio = {"median": 16.0, "interval": [8.0, 32.0], "n_runs": 4, "e_over_k": [16.0]}
    rec = hyper.recommend(laws, flops=3e24, active_params=5.2e10, active_params_with_embedding=5.3e10,
                          n_experts=16, top_k=1, ratio=ratio)  # fmt: skip
    assert rec["eta"] == pytest.approx(0.5 * 3e24**-0.2, rel=1e-6)
    assert any("decades beyond" in w for w in rec["warnings"])
    paper = [r for r in rec["rows"] if r["source"].startswith("Hunyuan-Large rule")][0]
    assert paper["value"] == pytest.approx(expert_lr_ratio(1000, 1000, 16))  # 2/(4 + 1/4)
    # a measured ratio of E/k reproduces the paper's rule
    assert rec["expert_lr_scale"] == pytest.approx(paper["value"])
    ds = [r for r in rec["rows"] if "DeepSeek" in r["source"] and "eta_opt" in r["source"]][0]
    assert ds["value"] == pytest.approx(0.3118 * 3e24**-0.125)
    text = hyper.format_recommendation(rec, "hunyuan-large")
    assert "peak learning rate" in text and "warning:" in text
    json.dumps(rec)  # plain JSON


def test_noise_ratio_of_moe_runs():
    runs = pd.DataFrame({"n_experts": [1, 8, 8], "top_k": [1, 1, 1], "b_simple_shared": [100.0] * 3,
                         "b_simple_expert": [np.nan, 800.0, 1200.0]})  # fmt: skip
    r = hyper.noise_ratio(runs)
    assert r["median"] == pytest.approx(10.0) and r["n_runs"] == 2 and r["e_over_k"] == [8.0]
    assert hyper.noise_ratio(runs.drop(columns="b_simple_expert")) is None


# ---------------------------------------------------------------------------------------------- sweep axes
BASE = {"name": "h", "model": {"vocab_size": 256, "max_seq_len": 64, "active_params": 2e4},
        "train": {"seq_len": 32, "tokens": 10000}}  # fmt: skip


def test_lr_and_batch_axes_cross_and_reach_the_train_config():
    spec = SweepSpec.from_dict({**BASE, "axes": {"lr": {"around": 3e-3, "factor": 3, "n": 3},
                                                 "batch_size": [4, 8]}})  # fmt: skip
    assert spec.axes["lr"] == pytest.approx([1e-3, 3e-3, 9e-3])
    trials = spec.trials()
    assert len(trials) == 6 and len({t.run_id for t in trials}) == 6
    got = sorted((t.run.train.lr, t.run.train.batch_size) for t in trials)
    assert got == sorted((lr, b) for lr in spec.axes["lr"] for b in (4, 8))
    grid = SweepSpec.from_dict({**BASE, "axes": {"batch_size": {"around": 8, "factor": 2, "n": 3}}})
    assert grid.axes["batch_size"] == [4, 8, 16] and all(isinstance(b, int) for b in grid.axes["batch_size"])


@pytest.mark.parametrize(
    "axes,train,key",
    [
        ({"lr": [1e-3]}, {"lr": 1e-3}, "train.lr"),
        ({"lr": {"centre": 1e-3}}, {}, "axes.lr"),
        ({"lr": {"around": 1e-3, "factor": 1, "n": 3}}, {}, "axes.lr.factor"),
        ({"batch_size": [4, 0]}, {}, "axes.batch_size"),
        ({"batch_size": [4.5]}, {}, "axes.batch_size"),
    ],
)
def test_bad_train_axes_fail_naming_the_key(axes, train, key):
    with pytest.raises(ConfigError, match=f"h.yaml: {key}"):
        SweepSpec.from_dict({**BASE, "train": {**BASE["train"], **train}, "axes": axes}, source="h.yaml")


def test_isoflop_on_c_min_moves_the_compute_coordinate_only():
    from analysis.isoflop import fit_isoflop

    rows = []
    for C in np.logspace(10, 13, 4):
        for n in 0.1 * C**0.5 * np.logspace(-0.5, 0.5, 7):
            rows.append({"active_params": n, "tokens": C / (6 * n), "flops": C, "c_min": C / (1 + C**0.1),
                         "loss": 2 + (np.log(n) - np.log(0.1 * C**0.5)) ** 2})  # fmt: skip
    df = pd.DataFrame(rows)
    on_c, on_cmin = fit_isoflop(df), fit_isoflop(df, compute_col="c_min")
    assert on_c.params["a"] == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose(on_cmin.minima["N_opt"], on_c.minima["N_opt"])
    np.testing.assert_allclose(on_cmin.minima["C"], on_c.minima["C"])
    # N* = 0.1 C^0.5 and C_min ~ C^0.9 at large C: the exponent on C_min is steeper than on C
    slope = np.polyfit(np.log(on_cmin.minima["c_min"]), np.log(on_cmin.minima["N_opt"]), 1)[0]
    assert on_cmin.params["a"] == pytest.approx(slope) and on_cmin.params["a"] > 0.5
    with pytest.raises(MoelabError, match="c_max"):
        fit_isoflop(df, compute_col="c_max")


def _export(folder):
    runs = _surface(_cells(), LRS, BATCHES, noise=0.001)
    runs["run_id"] = [f"r{i:03d}" for i in range(len(runs))]
    runs["status"], runs["top_k"], runs["train_loss"] = "succeeded", 1, runs["loss"]
    runs["b_simple_shared"] = 500.0
    runs["b_simple_expert"] = np.where(runs["n_experts"] > 1, 2500.0, np.nan)
    curve = list(zip((10, 20, 30), (3.0, 2.5, 2.2), strict=True))
    pts = [{"run_id": r, "step": s, "loss": L, "b_simple": 100 * L**-4} for s, L in curve for r in ("a", "b")]
    runs.to_csv(folder / hyper.RUNS_CSV, index=False)
    pd.DataFrame(pts).to_csv(folder / hyper.NOISE_CSV, index=False)
    return folder


def test_moelab_plan_prints_lr_batch_and_expert_scale_with_intervals(tmp_path, capsys):
    from moelab.cli import main

    src = _export(tmp_path)
    assert main(["plan", "--preset", "hunyuan-large", "--hyper", str(src)]) == 0
    out = capsys.readouterr().out
    assert "peak learning rate" in out and "batch (tokens)" in out and "expert LR scale" in out
    assert "95% [" in out and "warning:" in out and "decades beyond" in out
    assert "DeepSeek" in out and "Ludziejewski" in out
    assert main(["plan", "--preset", "hunyuan-large", "--hyper", str(src), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)["hyper"]
    # measured expert/shared noise ratio 5 (E/k = 8 in these runs): the rule gives 2/(sqrt 5 + 1/sqrt 5)
    assert rec["expert_lr_scale"] == pytest.approx(2 / (5**0.5 + 5**-0.5))
    assert rec["tokens"] == 7e12 and rec["batch_sequences"] == pytest.approx(rec["batch_tokens"] / 4096)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--chips", "8"], "--chips and --chip go together"),
        (["--hyper", "/nonexistent"], "neither a results folder"),
    ],
)
def test_moelab_plan_bad_hyper_input_is_one_line_exit_2(argv, match, capsys):
    from moelab.cli import main

    assert main(["plan", "--preset", "hunyuan-large", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_report_section_draws_cells_laws_and_noise():
    from pathlib import Path

    from analysis.report.data import ResultsData
    from analysis.report.hyper import hyper_section

    runs = _surface(_cells(), LRS, BATCHES, noise=0.001)
    runs["run_id"], runs["status"] = [f"r{i:03d}" for i in range(len(runs))], "succeeded"
    runs["train_loss"], runs["top_k"] = runs["loss"], 1
    rng = np.random.default_rng(0)
    curves = {}
    for rid, e in zip(runs["run_id"][:6], runs["n_experts"][:6], strict=True):
        L = np.linspace(3.0, 2.0, 20)
        c = pd.DataFrame({"step": np.arange(1, 21) * 10, "tokens": np.arange(1, 21) * 5120, "loss": L,
                          "b_simple": 50 * L**-4 * np.exp(0.05 * rng.normal(size=20))})  # fmt: skip
        c["b_simple_shared"] = c["b_simple"]
        c["b_simple_expert"] = c["b_simple"] * (6.0 if e > 1 else np.nan)
        curves[rid] = c
    data = ResultsData(root=Path("."), runs=runs, curves=curves)
    sec, fits = hyper_section(data, n_boot=20)
    assert [name for name, _ in sec.figures] == ["hyper_lr", "hyper_laws", "hyper_noise"]
    captions = [c for c, _ in sec.tables]
    assert any("per cell" in c for c in captions) and any("B_crit" in c for c in captions)
    assert fits["bcrit"]["b_simple"]["alpha_B"] == pytest.approx(0.25, rel=0.1)
    json.dumps(fits, default=float)
    bare = ResultsData(root=Path("."), runs=runs.drop(columns=["lr"]), curves={})
    assert hyper_section(bare) == (None, None)


def test_export_of_a_results_folder_round_trips(tmp_path):
    from moelab.sweep.runid import run_id
    from moelab.sweep.store import write_table
    from tests._train_helpers import tiny_run

    def results(folder, lrs, loss0):
        for i, lr in enumerate(lrs):
            run = tiny_run(tmp_path / "corpus.txt", lr=lr)
            rd = tmp_path / folder / "runs" / run_id(run)
            rd.mkdir(parents=True)
            (rd / "config.json").write_text(json.dumps(run.to_dict()))
            summary = {"status": "succeeded", "eval_loss": loss0 + i, "train_loss": 2.1 + i, "tokens": 5120,
                       "b_simple": 100.0 * (i + 1), "b_simple_expert": 500.0}  # fmt: skip
            (rd / "summary.json").write_text(json.dumps(summary))
            rows = [{"step": s, "loss": 3.0 - 0.01 * s, "b_simple": 10.0 * s} for s in (2, 20, 30)]
            (rd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_table(tmp_path / folder)

    results("sweep", (1e-3, 3e-3, 1e-2), 2.0)
    assert hyper.main(["export", str(tmp_path / "sweep"), str(tmp_path / "out")]) == 0
    runs, points = hyper.load_hyper(tmp_path / "out")
    assert sorted(runs["lr"]) == [1e-3, 3e-3, 1e-2] and sorted(runs["b_simple"]) == [100.0, 200.0, 300.0]
    assert len(points) == 6 and set(points["step"]) == {20, 30}  # the first 20% of each run left out
    # a second results folder (the sweep grown elsewhere) adds its runs; the exported ones are kept, and a
    # run in both takes the new folder's row
    results("more", (1e-2, 3e-2), 5.0)
    assert hyper.main(["export", str(tmp_path / "more"), str(tmp_path / "out")]) == 0
    runs, points = hyper.load_hyper(tmp_path / "out")
    assert sorted(runs["lr"]) == [1e-3, 3e-3, 1e-2, 3e-2] and runs["run_id"].is_unique
    assert dict(zip(runs["lr"], runs["loss"], strict=True)) == {1e-3: 2.0, 3e-3: 3.0, 1e-2: 5.0, 3e-2: 6.0}
    assert len(points) == 8 and points.groupby("run_id").size().eq(2).all()
    assert hyper.main(["export", str(tmp_path / "nope"), str(tmp_path / "out2")]) == 2


def test_cells_group_jittered_tokens_fit_near_the_optimum_and_fall_back_at_a_batch_edge():
    cells = _cells()[:1]
    df = _surface(cells, LRS, BATCHES)
    df["tokens"] = df["tokens"] + df["batch_size"] * SEQ  # whole steps: a cell's tokens differ by a batch
    diverged = df["lr"] == LRS[-1]
    df.loc[diverged, "loss"] += 3.0  # the top rate blows up: far from quadratic
    opt = hyper.cell_optima(df, n_boot=10)
    t = opt.table
    assert len(t) == 1 and t["n_fit"][0] < len(df)  # one cell; the blown-up runs are not fitted
    assert t["eta_opt"][0] == pytest.approx(cells[0]["eta"], rel=1e-6)
    assert t["B_opt"][0] == pytest.approx(cells[0]["B"], rel=1e-6)
    # loss falling with the batch all the way down: no valley in log B inside the grid
    mono = _surface([{**cells[0], "B": 1.0}], LRS, BATCHES)
    t = hyper.cell_optima(mono, n_boot=10).table
    assert t["kind"][0].startswith("lr at the best batch")
    assert t["B_opt"][0] == pytest.approx(BATCHES[0] * SEQ)
    assert not t["inside_B"][0] and t["inside_lr"][0]
    laws, notes = hyper.fit_hyper_laws(hyper.cell_optima(mono, n_boot=10))
    assert any("batch optimum is outside" in n for n in notes)


def test_moelab_plan_fits_the_committed_rows_of_a_fresh_clone(capsys):
    from moelab.cli import main

    assert (hyper.default_data_dir() / hyper.RUNS_CSV).is_file()
    assert main(["plan", "--preset", "hunyuan-large"]) == 0
    out = capsys.readouterr().out
    assert "fitted eta_opt(C)" in out and "warning:" in out and "data/hyper" in out
