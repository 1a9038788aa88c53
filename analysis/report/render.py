"""Rendering the report's sections to a self-contained index.html (figures embedded as base64 PNG) and to
report.md (figures linked from figures/), and writing the whole folder atomically."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["Section", "write_report_folder"]


@dataclass
class Section:
    key: str  # anchor and figure-name prefix
    title: str
    lead: str  # one sentence: what to read from this section
    paragraphs: list[str] = field(default_factory=list)  # prose, shown after the lead
    figures: list[tuple[str, object]] = field(default_factory=list)  # (name, matplotlib Figure)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, formatted table)
    notes: list[str] = field(default_factory=list)
    pre: str | None = None  # preformatted text (the sweep file)


CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1060px;margin:2em auto;
padding:0 1.2em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.1em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;
padding-bottom:.2em} .sub{color:#666;margin-top:0} .lead{color:#333;font-style:italic}
.summary{background:#f5f7fa;border-left:4px solid #3b6ea8;padding:.6em 1em;margin:1em 0}
.summary div{margin:.15em 0} nav{font-size:.9em;color:#555} nav a{margin-right:.8em}
figure{margin:1em 0;text-align:center} figure img{max-width:100%;height:auto}
figure img.narrow{max-width:760px}
figcaption{font-size:.85em;color:#555}
table{border-collapse:collapse;font-size:.82em;margin:.8em 0;width:100%}
th,td{border-bottom:1px solid #e3e3e3;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#fafafa;position:sticky;top:0} td:first-child,th:first-child{text-align:left}
.tablewrap{max-height:32em;overflow:auto} caption{caption-side:top;text-align:left;color:#555;padding:.3em 0}
pre{background:#f6f6f6;padding:.8em;font-size:.8em;overflow:auto} .note{font-size:.88em;color:#444}
"""


def _fig_bytes(fig, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()


def _md_cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _html_table(caption: str, df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    body = f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
    return f'<div class="tablewrap"><table>{cap}{body}</table></div>'


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(o):
    """NaN/inf -> None so fits.json is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def write_report_folder(
    out: Path, title: str, subtitle: str, summary: list[str], sections: list[Section], fits: dict
) -> Path:
    """Write out/{index.html, report.md, figures/, fits.json} into a temporary sibling and swap it in."""
    import matplotlib.pyplot as plt  # heavy: only writing a report with figures needs it

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        (tmp / "figures").mkdir()
        nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(subtitle)}</p>",
            '<div class="summary">'
            + "".join(f"<div>{html.escape(line)}</div>" for line in summary)
            + "</div>",
            f"<nav>{nav}</nav>",
        ]
        md = [f"# {title}", "", subtitle, "", *[f"- {line}" for line in summary], ""]
        for s in sections:
            parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>')
            parts.append(f'<p class="lead">{html.escape(s.lead)}</p>')
            md += [f"## {s.title}", "", f"*{s.lead}*", ""]
            for para in s.paragraphs:
                parts.append(f"<p>{html.escape(para)}</p>")
                md += [para, ""]
            for name, fig in s.figures:
                png = _fig_bytes(fig, "png")
                svg = _fig_bytes(fig, "svg")
                plt.close(fig)
                (tmp / "figures" / f"{name}.png").write_bytes(png)
                (tmp / "figures" / f"{name}.svg").write_bytes(svg)
                b64 = base64.b64encode(png).decode()
                parts.append(
                    f'<figure><img alt="{html.escape(s.title)}: {name}" src="data:image/png;base64,{b64}">'
                    f'<figcaption>{html.escape(name)} · <a href="figures/{name}.svg">SVG</a> · '
                    f'<a href="figures/{name}.png">PNG</a></figcaption></figure>'
                )
                md += [f"![{s.title}](figures/{name}.png)", ""]
            for caption, df in s.tables:
                parts.append(_html_table(caption, df))
                md += ([f"**{caption}**", ""] if caption else []) + [_md_table(df), ""]
            for note in s.notes:
                parts.append(f'<p class="note">{html.escape(note)}</p>')
                md += [note, ""]
            if s.pre:
                parts.append(f"<pre>{html.escape(s.pre)}</pre>")
                md += ["```yaml", s.pre.rstrip("\n"), "```", ""]
            parts.append("</section>")
        parts.append("</body></html>")
        (tmp / "index.html").write_text("\n".join(parts), encoding="utf-8")
        (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
        (tmp / "fits.json").write_text(
            json.dumps(_clean(json.loads(json.dumps(fits, default=_json_default))), indent=1, allow_nan=False)
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the report is meant to be shared
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
