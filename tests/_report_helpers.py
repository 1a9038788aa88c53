"""Shared helpers of the report, notebook and demo tests: results folders (synthetic, and from a real fast
sweep) and a headless-Chromium renderer.

Folders are built once per test session (cached here, keyed by kind) so that several test modules share them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_CACHE: dict[str, Path] = {}

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]


def synthetic_results(tmp_path_factory, *, small: bool = True, seed: int = 0, **law) -> Path:
    """A synthetic results folder (analysis.report.synthetic), one per (small, seed, law) per session."""
    from analysis.report.synthetic import TrueLaw, write_synthetic_results

    key = f"synthetic-{small}-{seed}-{sorted(law.items())}"
    if key not in _CACHE:
        root = tmp_path_factory.mktemp("synthetic")
        _CACHE[key] = write_synthetic_results(root / "synthetic", small=small, seed=seed, law=TrueLaw(**law))
    return _CACHE[key]


# Three laws, few starts and resamples: the report tests check its plumbing, analysis/ tests the fits.
# granularity covers every held-out run (it can be ranked); chinchilla (dense runs) and clark (one token
# budget) are fitted on their domains and listed.
FAST_REPORT = {"n_boot": 8, "max_starts": 16, "laws": ["chinchilla", "clark", "granularity"]}


def synthetic_report(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(results folder, report folder, summary) of one report over a private copy of the small synthetic
    folder, built once per session with :data:`FAST_REPORT` (read-only for the tests that share it)."""
    if "report" not in _CACHE:
        from analysis.report import build_report

        src = synthetic_results(tmp_path_factory)
        root = copy_results(src, tmp_path_factory.mktemp("rep") / "synthetic")
        folder, summary = build_report(root, **FAST_REPORT)
        _CACHE["report"] = (root, folder, summary)
    return _CACHE["report"]


def copy_results(src: Path, dst: Path) -> Path:
    """A private copy (tests that write reports must not race on the shared folder)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report", "checkpoints"))
    return dst


# A fast real sweep: tiny MoE models on the default corpus, a few dozen steps each, on an embedded Ray.
FAST_SWEEP = """\
name: reporttest
description: tiny sweep for the report and notebook tests (2 sizes x 3 token budgets, 4 experts)
model: {vocab_size: 256, max_seq_len: 32}
data: {corpus: default, tokenizer: byte}
train: {seq_len: 32, batch_size: 4, eval_tokens: 1024, log_every: 4, eval_every: 8, checkpoint_every: 1000}
generator: grid
axes:
  n_experts: [4]
  active_params: [1.0e4, 3.0e4]
  tokens: [2048, 4096, 8192]
seeds: [0]
max_concurrency: 2
"""


def real_results(tmp_path_factory) -> Path:
    """A results folder made by a fast real sweep (session-cached): the sweep package's ``run_sweep`` on an
    embedded Ray, training six tiny MoE models on the default corpus (two model shapes: two compilations).
    A sweep package that fails to import, or a sweep that raises, fails the test that asked for it."""
    if "real" in _CACHE:
        return _CACHE["real"]
    from moelab.sweep.scheduler import run_sweep
    from moelab.sweep.spec import SweepSpec

    root = tmp_path_factory.mktemp("realsweep")
    spec_path = root / "reporttest.yaml"
    spec_path.write_text(FAST_SWEEP)
    outcome = run_sweep(SweepSpec.from_file(spec_path), root / "results", num_cpus=2)
    folder = Path(outcome["table"]).parent
    assert (folder / "runs.parquet").is_file(), outcome
    _CACHE["real"] = folder
    return folder


def notebook_results(tmp_path_factory) -> Path:
    """The results the notebooks run against: the fast real sweep. The synthetic set only when asked for by
    name (MOELAB_TEST_NOTEBOOKS=synthetic), never as a silent fallback."""
    if os.environ.get("MOELAB_TEST_NOTEBOOKS") == "synthetic":
        return synthetic_results(tmp_path_factory)
    return real_results(tmp_path_factory)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  var out = document.createElement('pre');
  out.id = 'moelab-probe';
  out.textContent = 'MOELAB_PROBE ' + JSON.stringify({images: imgs.length, loaded: ok.length,
    sections: Array.prototype.map.call(document.querySelectorAll('section'), function (s) { return s.id; })});
  document.body.appendChild(out);
});
</script>"""


def render_in_chromium(index_html: Path, screenshot: Path, width: int = 1200, height: int = 2400) -> dict:
    """Load ``index_html`` (from disk) in headless Chromium: which images decoded, which sections exist, and a
    screenshot of the top of the page. The probe runs on a copy placed next to the report so relative links
    resolve the same way."""
    exe = chromium()
    assert exe is not None
    probe = index_html.with_name(".probe.html")
    probe.write_text(index_html.read_text().replace("</body>", _PROBE + "</body>"))
    try:
        with tempfile.TemporaryDirectory() as profile:
            flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
            dom = subprocess.run(
                [exe, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
            )
            shot = subprocess.run(
                [
                    exe,
                    *flags,
                    f"--window-size={width},{height}",
                    f"--screenshot={screenshot}",
                    index_html.as_uri(),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r"MOELAB_PROBE (\{.*?\})\s*<", dom.stdout)
    assert m, f"no probe output from Chromium (rc {dom.returncode}): {dom.stderr[-800:]}"
    result = json.loads(m.group(1).replace("&quot;", '"'))
    result["screenshot_rc"] = shot.returncode
    return result
