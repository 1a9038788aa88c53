"""The report opens from disk in a real browser (Debian's headless Chromium) with every figure decoded."""

from __future__ import annotations

import pytest
from _report_helpers import chromium, render_in_chromium, synthetic_report

pytestmark = pytest.mark.skipif(chromium() is None, reason="no Chromium installed (apt-get install chromium)")


@pytest.mark.slow  # the session's synthetic report (fits two laws) and two Chromium runs
def test_index_html_renders_with_every_image_loaded(tmp_path_factory):
    from matplotlib.image import imread

    _, folder, _ = synthetic_report(tmp_path_factory)  # the session's report (shared with test_report.py)
    html = (folder / "index.html").read_text()
    shot = tmp_path_factory.mktemp("browser") / "screenshot.png"
    result = render_in_chromium(folder / "index.html", shot)
    assert result["images"] == html.count("<img ") > 0
    assert result["loaded"] == result["images"], result
    wanted = {"sweep", "curves", "compute", "heldout", "extrapolation", "router", "repro"}
    assert wanted <= set(result["sections"])
    # the screenshot shows a page, not a blank window: enough non-white pixels and more than two colours
    img = imread(shot)
    assert result["screenshot_rc"] == 0 and img.shape[0] > 1000
    rgb = img[..., :3].reshape(-1, 3)
    assert (rgb.min(axis=1) < 0.9).mean() > 0.02
    assert len({tuple(p) for p in (rgb[::97] * 255).astype(int)}) > 20


def test_the_probe_sees_a_broken_image(tmp_path):
    """The check can fail: a corrupt embedded PNG is reported as not loaded."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    good = base64.b64encode(buf.getvalue()).decode()
    bad = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really a png").decode()
    page = tmp_path / "index.html"
    page.write_text(
        f'<html><body><section id="a"><img src="data:image/png;base64,{good}">'
        f'<img src="data:image/png;base64,{bad}"></section></body></html>'
    )
    result = render_in_chromium(page, tmp_path / "shot.png", height=400)
    assert result["images"] == 2 and result["loaded"] == 1 and result["sections"] == ["a"]
