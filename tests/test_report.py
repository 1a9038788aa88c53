"""The report: synthetic results (following the contract) -> RESULTS/report/{index.html, report.md, figures/,
fits.json}."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _report_helpers import FAST_REPORT, synthetic_report, synthetic_results

from analysis.isoflop import _group_minimum, isoflop_minima
from analysis.report import figures as F
from analysis.report.synthetic import TrueLaw, synthetic_grid, write_synthetic_results
from moelab.cli import main
from tests._train_helpers import METRIC_KEYS, SUMMARY_KEYS

PARQUET_COLUMNS = """
run_id sweep status run_dir seed n_experts top_k n_shared_experts shared_ratio granularity d_model
n_layers n_heads n_kv_heads head_dim d_expert d_shared vocab_size capacity_factor overflow cla_share
active_params active_params_with_embedding total_params total_params_with_embedding flops_per_token
seq_len batch_size tokens flops steps lr schedule expert_lr_scale loss bpb train_loss wall_time_s
tokens_per_s mfu dropped_frac recycled_frac load_min load_max diverged_step moelab_version
jax_version python_version git_commit corpus_fingerprint
""".split()  # noqa: SIM905


FAST = FAST_REPORT


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report over the small synthetic grid (shared with the browser test)."""
    return synthetic_report(tmp_path_factory)


# ------------------------------------------------------------ the synthetic generator follows the contract
def test_synthetic_follows_the_results_contract(tmp_path_factory):
    root = synthetic_results(tmp_path_factory)
    df = pd.read_parquet(root / "runs.parquet")
    assert set(PARQUET_COLUMNS) <= set(df.columns)
    assert set(df["status"]) == {"succeeded", "failed", "diverged"}
    for row in df.itertuples():
        rd = Path(row.run_dir)
        assert rd.parent.parent == root
        cfg = json.loads((rd / "config.json").read_text())
        assert set(cfg) == {"model", "data", "train"}
        lines = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
        assert lines and all(set(x) >= METRIC_KEYS for x in lines)
        assert [x["step"] for x in lines] == sorted({x["step"] for x in lines})
        summary = json.loads((rd / "summary.json").read_text())
        assert set(summary) >= SUMMARY_KEYS
        assert summary["status"] == row.status
        load = np.asarray(summary["expert_load"])
        assert load.shape == (row.n_layers, row.n_experts)
        np.testing.assert_allclose(load.sum(axis=1), 1.0, atol=1e-3)
        if row.status == "succeeded":
            # the last evaluation is the run's final held-out loss
            assert [x for x in lines if "eval_loss" in x][-1]["eval_loss"] == pytest.approx(row.loss)
            assert row.flops == pytest.approx(row.flops_per_token * row.tokens)
    ok = df[df["status"] == "succeeded"]
    assert ok["loss"].notna().all() and df.loc[df["status"] != "succeeded", "loss"].isna().all()


def test_synthetic_losses_follow_the_true_law(tmp_path):
    law = TrueLaw(noise=0.0)
    root = write_synthetic_results(tmp_path / "s", law=law, small=True)
    df = pd.read_parquet(root / "runs.parquet")
    ok = df[df["status"] == "succeeded"]
    want = law.loss(ok["active_params"], ok["tokens"], ok["n_experts"], ok["shared_ratio"], ok["granularity"])
    np.testing.assert_allclose(ok["loss"], want, rtol=1e-12)
    # Clark's saturating expert count: 1 for a dense model, increasing, below E
    e = np.array([1, 2, 4, 8, 64, 512])
    eh = law.e_hat(e)
    assert eh[0] == pytest.approx(1.0) and np.all(np.diff(eh) > 0) and np.all(eh <= e)
    # pure function of the seed
    again = write_synthetic_results(tmp_path / "t", law=law, small=True)
    pd.testing.assert_frame_equal(
        df.drop(columns="run_dir"), pd.read_parquet(again / "runs.parquet").drop(columns="run_dir")
    )


def test_grid_has_every_arm():
    g = synthetic_grid(small=True)
    assert len({p.n_experts for p in g}) >= 3 and len({p.granularity for p in g}) >= 2
    assert {p.status for p in g} == {"succeeded", "failed", "diverged"}


# ---------------------------------------------------------------- the report folder
@pytest.mark.slow  # the module's report fits two laws with a bootstrap (JAX compilation)
def test_report_folder_is_complete_and_self_contained(report):
    root, folder, summary = report
    assert folder == root / "report"
    assert {p.name for p in folder.iterdir()} == {"index.html", "report.md", "figures", "fits.json"}
    html = (folder / "index.html").read_text()
    # self-contained: every image is embedded, nothing is fetched
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html
    figs = sorted(p.name for p in (folder / "figures").iterdir())
    pngs = [f for f in figs if f.endswith(".png")]
    assert len(pngs) == len(srcs) and sorted(f.replace(".png", ".svg") for f in pngs) == [
        f for f in figs if f.endswith(".svg")
    ]
    for f in pngs:
        assert (folder / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "report.md").read_text()
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (folder / link).is_file()
    assert len(summary) == 3
    for line in summary:
        assert line in html


@pytest.mark.slow
def test_sections_shown_for_the_data(report):
    root, folder, _ = report
    html = (folder / "index.html").read_text()
    ids = re.findall(r'<section id="([a-z]+)">', html)
    want = [
        "claims",
        "sweep",
        "curves",
        "compute",
        "isoflop",
        "moe",
        "heldout",
        "params",
        "published",
        "extrapolation",
        "router",
        "repro",
    ]
    assert ids == want
    # failed and diverged runs are listed in the sweep table, not silently dropped
    sweep_html = html[html.index('<section id="sweep">') : html.index('<section id="curves">')]
    assert "<td>failed</td>" in sweep_html and "<td>diverged</td>" in sweep_html
    # every section has its one-sentence reading guide
    assert html.count('<p class="lead">') == len(ids)
    fits = json.loads((folder / "fits.json").read_text())
    assert fits["sections"] == ids
    assert fits["n_runs"] == len(pd.read_parquet(root / "runs.parquet"))
    # the minima of the IsoFLOP parabolas move right (to larger models) with compute
    n_opt = [m["N_opt"] for m in sorted(fits["isoflop_minima"], key=lambda m: m["C"])]
    assert len(n_opt) >= 2 and n_opt == sorted(n_opt)


def test_sections_left_out_when_the_data_cannot_support_them(tmp_path):
    from analysis.report import build_report

    root = write_synthetic_results(tmp_path / "s", small=True)
    df = pd.read_parquet(root / "runs.parquet")
    # keep only dense runs of one size: no IsoFLOP profile, no MoE comparison, no router
    keep = df[(df["n_experts"] == 1)]
    keep.to_parquet(root / "runs.parquet", index=False)
    folder, summary = build_report(root, n_boot=0, laws=[])
    ids = re.findall(r'<section id="([a-z]+)">', (folder / "index.html").read_text())
    assert "sweep" in ids and "repro" in ids and "curves" in ids
    for absent in ("isoflop", "moe", "router", "heldout", "extrapolation"):
        assert absent not in ids
    assert summary[0].startswith("best law: none")


def test_rewrite_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous report whole and no temporary folder behind."""
    from analysis.report import build_report

    root = write_synthetic_results(tmp_path / "s", small=True)
    folder, _ = build_report(root, n_boot=0, laws=[])
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(F, "router_health", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(root, n_boot=0, laws=[])
    after = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in root.iterdir()) == ["report", "runs", "runs.parquet", "sweep.yaml"]


# ---------------------------------------------------------------- the command line
def test_cli_report_writes_and_prints_summary(tmp_path, capsys):
    root = write_synthetic_results(tmp_path / "s", small=True)
    out_dir = tmp_path / "out"
    argv = [
        "report",
        str(root),
        "--bootstrap",
        "0",
        "--starts",
        "8",
        "--laws",
        "granularity",
        "--out",
        str(out_dir),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"report: {out_dir / 'index.html'}" in out
    assert "best law: granularity" in out
    assert out.count("\n") == 4 and (tmp_path / "out" / "index.html").is_file()


@pytest.mark.parametrize("make", ["missing", "empty_dir", "bad_parquet", "no_runs", "bad_law", "bad_boot"])
def test_cli_report_bad_input_is_one_line_exit_2(tmp_path, capsys, make):
    root = tmp_path / "r"
    extra = {"bad_law": ["--laws", "chinchilla,nope"], "bad_boot": ["--bootstrap", "-1"]}.get(make, [])
    if make in ("bad_law", "bad_boot"):
        write_synthetic_results(root, small=True)
    elif make != "missing":
        root.mkdir()
    if make == "bad_parquet":
        (root / "runs.parquet").write_text("not parquet")
    if make == "no_runs":
        pd.DataFrame({"run_id": [], "status": [], "loss": []}).to_parquet(root / "runs.parquet")
    assert main(["report", str(root), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moelab: error: ") and err.count("\n") == 1
    assert not (root / "report").exists()


# ---------------------------------------------------------------- IsoFLOP profiles against slow references
def test_isoflop_parabola_minimum_matches_a_grid_search():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = np.geomspace(1e4, 1e7, rng.integers(3, 8))
        c = rng.uniform(0.05, 0.5)
        x0 = rng.uniform(np.log(2e4), np.log(5e6))
        loss = 3.0 + c * (np.log(n) - x0) ** 2 + rng.normal(0, 0.003, len(n))
        got = _group_minimum(np.log(n), np.log(1e12 / n), loss)
        assert got is not None
        coef = np.polyfit(np.log(n), loss, 2)
        xs = np.linspace(np.log(n).min() - 3, np.log(n).max() + 3, 400_001)
        ys = np.polyval(coef, xs)
        assert got[0] == pytest.approx(xs[ys.argmin()], abs=1e-4)
        assert got[2] == pytest.approx(ys.min(), abs=1e-9)
        assert got[1] == pytest.approx(np.log(1e12) - got[0], abs=1e-9)  # D* from the budget's own cost
    # a concave profile has no minimum
    n = np.geomspace(1e4, 1e6, 5)
    assert _group_minimum(np.log(n), np.log(1e12 / n), -(np.log(n) ** 2)) is None


def test_isoflop_groups_match_a_brute_force_grouping():
    rng = np.random.default_rng(2)
    rows = []
    for arch in (1, 8):
        for c in (1e12, 1e13, 1e14):
            for n in rng.choice(np.geomspace(1e4, 1e7, 12), size=rng.integers(1, 6), replace=False):
                rows.append(
                    {
                        "run_id": f"{arch}-{c}-{n}",
                        "n_experts": arch,
                        "top_k": 1,
                        "n_shared_experts": 0,
                        "granularity": 1.0,
                        "flops": c * rng.uniform(0.97, 1.03),
                        "active_params": n,
                        "tokens": c / (6 * n),
                        "loss": 3.0 + 0.1 * (np.log(n) - np.log(3e5)) ** 2,
                    }
                )
    df = pd.DataFrame(rows)
    got = {frozenset(ids) for ids in isoflop_minima(df)["run_ids"]}
    want = set()
    for _, g in df.groupby(["n_experts", df["run_id"].str.split("-").str[1]]):
        if g["active_params"].nunique() >= 3:
            want.add(frozenset(g["run_id"]))
    assert got == want


def test_sci_labels():
    assert F.sci(3.0e12) == "3.0e12" and F.sci(52e9) == "5.2e10" and F.sci(1.5) == "1.5"
    assert F.sci(float("nan")) == "—" and F.sci(0) == "0"


# ---------------------------------------------------------------- one code path, and the words
@pytest.mark.slow
def test_fit_compare_and_report_rank_the_laws_identically(report, capsys):
    """``moelab fit --compare`` and ``moelab report`` are one code path (analysis.validate.rank_laws): on
    the same runs with the same options they hold out the same runs and rank the laws in the same order with
    the same errors and intervals."""
    root, folder, _ = report
    fits = json.loads((folder / "fits.json").read_text())
    argv = ["fit", str(root), "--compare", "--json", "--laws", ",".join(FAST["laws"])]
    argv += ["--starts", str(FAST["max_starts"]), "--bootstrap", str(FAST["n_boot"])]
    capsys.readouterr()
    assert main(argv) == 0
    cli = json.loads(capsys.readouterr().out)
    rep = fits["ranking"]
    assert cli["best"] == rep["best"] == fits["best_law"] and cli["best"] is not None
    assert cli["heldout_run_ids"] == rep["heldout_run_ids"] == fits["heldout_run_ids"]
    assert [r["law"] for r in cli["compare"]] == [r["law"] for r in rep["compare"]]
    for a, b in zip(cli["compare"], rep["compare"], strict=True):
        for k in ("held_out_mean_abs_rel_error", "held_out_lo", "held_out_hi", "n_train", "ranked"):
            va, vb = a.get(k), b.get(k)
            if isinstance(va, float) and math.isfinite(va):
                assert va == pytest.approx(vb, rel=1e-9), (a["law"], k)
            else:
                assert (vb is None or vb != vb or vb == va), (a["law"], k)


# sentences that explain a result by the size of the models, which the runs do not measure
BLAME = re.compile(
    r"too small|tiny|(at|of) (this|these|such) (small )?scales?|small[- ]scale|"
    r"because of (the )?(size|scale)|will not pin",
    re.I,
)


@pytest.mark.slow
def test_report_says_what_the_runs_can_claim(report):
    root, folder, _ = report
    md = (folder / "report.md").read_text()
    assert not BLAME.search(md), BLAME.search(md)
    claims = md[md.index("## What these runs can and cannot claim") : md.index("## The sweep")]
    fits = json.loads((folder / "fits.json").read_text())
    s = fits["scope"]
    assert f"{s['n_dense']} dense, {s['n_moe']} MoE" in claims and "decades" in claims
    assert "activated non-embedding parameter count" in claims  # the N convention
    assert "beyond the largest run here" in claims and "hunyuan-large" in claims
    assert "0.5305" in claims and "0.5 " in claims  # the paper's exponents beside the sweep's
    # every parameter on a bound is flagged in the parameters table and in the words
    for name, law in fits["laws"].items():
        if law["on_bound"]:
            assert f"{name}: {', '.join(law['on_bound'])}" in claims
    params = md[md.index("**Parameters**") :]
    flagged = params.count("YES: not an estimate")
    assert flagged == sum(len(law["on_bound"]) for law in fits["laws"].values())
    # every exponent has a 95% interval
    for name, law in fits["laws"].items():
        assert set(law["intervals"]) == set(law["params"]), name
