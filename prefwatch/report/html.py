"""``report --format html``: one self-contained page to attach to a pull request.

Inline SVG charts (train vs held-out per cell; with several seeds, one band per setting), the review
table, findings, best checkpoints and the verdict with its evidence. No script, no external style,
font or image: a Content-Security-Policy of ``default-src 'none'`` makes sure the browser fetches
nothing. Every text from logs or file names is escaped (and made visible by textsafe.plain).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prefwatch.analysis import bands
from prefwatch.analysis.analyse import CellAnalysis, GridAnalysis, best_lines
from prefwatch.analysis.peak import at_line
from prefwatch.core import metrics as m
from prefwatch.core.completions import new_words
from prefwatch.core.diagnose import heldout_accuracy_series, heldout_margin_series
from prefwatch.core.textsafe import plain
from prefwatch.report.plot import ema
from prefwatch.report.text import COLUMNS, brevity_lines, pair_notes, review_row, verdict_items

WIDTH, HEIGHT = 520, 240
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 48, 48, 14, 30
MAX_POINTS = 400  # points per line: min and max per pixel column keep spikes, the file stays small
COLOURS = {"train": "#1f77b4", "train_raw": "#aec7e8", "heldout": "#2ca02c", "accuracy": "#9467bd"}
SEVERITY_COLOURS = {"error": "#d62728", "warn": "#ff7f0e", "info": "#1f77b4"}

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1120px;padding:0 16px;color:#222}
h1{font-size:20px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
.depth1{margin-left:2em}.depth2{margin-left:4em}.verdict{font-size:17px;font-weight:600}.decisive{color:#1a7f37}.open{color:#9a6700}
.note{color:#666;font-style:italic}.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #ddd;border-radius:4px;padding:6px}figcaption{font-size:13px;margin-bottom:4px}
.answers td{white-space:pre-wrap;word-break:break-word;vertical-align:top}.answers ins{background:#fff3b0;text-decoration:none}
.sev-error{color:#d62728;font-weight:600}.sev-warn{color:#b35900;font-weight:600}.sev-info{color:#1f77b4}
svg text{font:11px system-ui,sans-serif;fill:#444}code{font-size:12px}
"""


def esc(value: object) -> str:
    return html.escape(plain(value), quote=True)


@dataclass(frozen=True)
class Line:
    steps: np.ndarray
    values: np.ndarray
    colour: str
    label: str
    right: bool = False  # on the right axis (accuracy, 0..1)
    dashed: bool = False
    width: float = 1.6


@dataclass(frozen=True)
class Area:
    steps: np.ndarray
    low: np.ndarray
    high: np.ndarray
    colour: str
    right: bool = False


def render_html(analysis: GridAnalysis) -> str:
    verdict = analysis.verdict
    name = esc(analysis.grid.name)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched: no network, no script; inline styles and SVG only.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>prefwatch report: {name}</title><style>{STYLE}</style></head><body>",
        f"<h1>prefwatch report: {name}</h1>",
        '<section id="verdict"><h2>Verdict</h2>',
        f'<p class="verdict {"decisive" if verdict.decisive else "open"}">{esc(verdict.headline)}</p>',
        f'<p class="note">The verdict {esc(at_line(analysis.at))}.</p><ul>',
        *(f'<li class="depth{min(depth, 2)}">{esc(line)}</li>' for depth, line in verdict_items(verdict)),
        "</ul></section>",
        '<section id="cells"><h2>Cells</h2><table><thead><tr>',
        *(f"<th>{esc(c.replace(chr(10), ' ').replace('- ', '-'))}</th>" for c in COLUMNS),
        "</tr></thead><tbody>",
        *("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in review_row(cell)) + "</tr>" for cell in analysis.cells),
        "</tbody></table>",
        *(f'<p class="note">{esc(n)}</p>' for n in pair_notes(analysis)),
        "</section>",
    ]
    best = best_lines(analysis.cells, analysis.grid.root)
    if best:
        parts += ['<section id="best"><h2>Best checkpoints</h2><ul>', *(f"<li>{esc(b)}</li>" for b in best), "</ul>"]
        parts.append("</section>")
    findings = [(c, f) for c in analysis.cells for f in c.diagnosis.findings]
    parts.append('<section id="findings"><h2>Findings</h2>')
    if findings:
        parts.append("<ul>")
        for cell, finding in findings:
            at = f" @ step {finding.step}" if finding.step is not None else ""
            parts.append(
                f'<li><span class="sev-{esc(finding.severity)}">{esc(finding.severity)}</span> '
                f"<code>{esc(cell.source.id)}</code> {esc(finding.kind)}{esc(at)}: {esc(finding.message)}</li>"
            )
        parts.append("</ul>")
    else:
        parts.append("<p>No findings.</p>")
    parts += [f"<p><b>Brevity:</b> {esc(line)}</p>" for line in brevity_lines(analysis)]
    parts.append("</section>")
    groups = bands.analysed_settings(analysis.cells)
    if groups:
        parts += [
            '<section id="seeds"><h2>Seeds as bands</h2>',
            f'<p class="note">One line per setting: the mean across seeds; the band: {bands.SPREAD}.</p><ul>',
            *(f"<li>{esc(line)}</li>" for line in bands.seed_lines(analysis.cells)),
            "</ul>",
            '<div class="charts">',
            *(band_figure(group) for group in groups),
            "</div></section>",
        ]
    parts += completions_section(analysis.cells)
    parts += [
        '<section id="charts"><h2>Train vs held-out, per cell</h2>',
        '<p class="note">Train margin (EMA, raw in light blue) and held-out margin on the left axis; '
        "held-out accuracy (dashed) on the right axis, 0 to 1. Vertical lines: the held-out peak (purple, "
        "dotted) and findings (red: error, orange: warn).</p>",
        '<div class="charts">',
        *(cell_figure(cell) for cell in analysis.cells),
        "</div></section></body></html>",
    ]
    return "\n".join(parts) + "\n"


def cell_figure(cell: CellAnalysis) -> str:
    series, pairs = cell.source.series, cell.source.pairs
    margins = series.train.column(m.MARGINS)
    steps_m, heldout_margin = heldout_margin_series(series, pairs)
    steps_a, accuracy = heldout_accuracy_series(series, pairs)
    lines = [
        Line(series.train.steps, margins, COLOURS["train_raw"], "train margin", width=0.8),
        Line(series.train.steps, ema(margins, 0.9), COLOURS["train"], "train margin (EMA)"),
        Line(steps_m, heldout_margin, COLOURS["heldout"], "held-out margin"),
        Line(steps_a, accuracy, COLOURS["accuracy"], "held-out accuracy", right=True, dashed=True),
    ]
    marks = [(f.step, SEVERITY_COLOURS.get(f.severity, "#888"), False) for f in cell.diagnosis.findings]
    peak = cell.diagnosis.review.peak_heldout_step
    if peak is not None:
        marks.append((peak, COLOURS["accuracy"], True))
    kinds = ", ".join(sorted({f.kind for f in cell.diagnosis.findings})) or "no findings"
    caption = f"{cell.source.id} ({cell.status.describe()}): {kinds}"
    return figure(caption, svg_chart(lines, [], marks, f"chart of {cell.source.id}"))


def band_figure(group: bands.Setting[CellAnalysis]) -> str:
    curves = [heldout_accuracy_series(c.source.series, c.source.pairs) for c in group.cells]
    b = bands.band(curves)
    colour = COLOURS["accuracy"]
    lines = [Line(b.steps, b.mean, colour, "held-out accuracy, mean", right=True)]
    area = Area(b.steps, b.low, b.high, colour, right=True)
    seeds = ", ".join(str(c.source.seed) for c in group.cells)
    caption = f"{group.label}: held-out accuracy, seeds {seeds}"
    return figure(caption, svg_chart(lines, [area], [], f"band of {group.label}"))


def figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{esc(caption)}</figcaption>{svg}</figure>"


# ---- SVG ------------------------------------------------------------------------------------------


def svg_chart(
    lines: Sequence[Line], areas: Sequence[Area], marks: Sequence[tuple[int | None, str, bool]], title: str
) -> str:
    finite_steps = [s[np.isfinite(s)] for s in [*(ln.steps for ln in lines), *(a.steps for a in areas)] if len(s)]
    x_max = max((float(s.max()) for s in finite_steps if len(s)), default=1.0) or 1.0
    left = [ln.values for ln in lines if not ln.right]
    y_lo, y_hi = _range(left)
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(step: float) -> float:
        return PAD_LEFT + step / x_max * plot_w

    def y(value: float, right: bool) -> float:
        lo, hi = (0.0, 1.0) if right else (y_lo, y_hi)
        return PAD_TOP + (1 - (value - lo) / (hi - lo)) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img"><title>{esc(title)}</title>',
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        py = PAD_TOP + (1 - frac) * plot_h
        if left:
            out.append(
                f'<text x="{PAD_LEFT - 4}" y="{py + 4:.1f}" text-anchor="end">{_tick(y_lo + frac * (y_hi - y_lo))}</text>'
            )
        out.append(f'<text x="{WIDTH - PAD_RIGHT + 4}" y="{py + 4:.1f}">{frac:.1f}</text>')
    for frac in (0.0, 0.5, 1.0):
        out.append(f'<text x="{x(frac * x_max):.1f}" y="{HEIGHT - 10}" text-anchor="middle">{frac * x_max:.0f}</text>')
    out.append(f'<text x="{PAD_LEFT + plot_w / 2}" y="{HEIGHT - 1}" text-anchor="middle">step</text>')
    for area in areas:
        d = _area_path(area, x, y)
        if d:
            out.append(f'<path class="band" d="{d}" fill="{area.colour}" fill-opacity="0.22" stroke="none"/>')
    for step, colour, dotted in marks:
        if step is None:
            continue
        dash = ' stroke-dasharray="2 3"' if dotted else ""
        out.append(
            f'<line x1="{x(step):.1f}" x2="{x(step):.1f}" y1="{PAD_TOP}" y2="{PAD_TOP + plot_h}" stroke="{colour}"{dash}/>'
        )
    for line in lines:
        d = _line_path(line, x, y)
        if d:
            dash = ' stroke-dasharray="5 3"' if line.dashed else ""
            out.append(
                f'<path class="line" d="{d}" fill="none" stroke="{line.colour}" stroke-width="{line.width}"{dash}>'
                f"<title>{esc(line.label)}</title></path>"
            )
    legend_x = PAD_LEFT + 6
    for i, line in enumerate(ln for ln in lines if ln.width > 1):
        ly = PAD_TOP + 12 + 13 * i
        out.append(f'<rect x="{legend_x}" y="{ly - 7}" width="10" height="3" fill="{line.colour}"/>')
        out.append(f'<text x="{legend_x + 14}" y="{ly}">{esc(line.label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _range(columns: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([c[np.isfinite(c)] for c in columns] or [np.empty(0)])
    if not len(values):
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _tick(value: float) -> str:
    return f"{value:.2g}" if math.isfinite(value) else ""


def _thin(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ~MAX_POINTS points: the first, min and max of each pixel bucket, NaN gaps kept."""
    if len(steps) <= MAX_POINTS:
        return steps, values
    buckets = np.minimum((np.arange(len(steps)) * (MAX_POINTS // 2) // len(steps)), MAX_POINTS // 2 - 1)
    keep: list[int] = []
    for b in range(MAX_POINTS // 2):
        idx = np.flatnonzero(buckets == b)
        if not len(idx):
            continue
        chunk = values[idx]
        finite = np.isfinite(chunk)
        if not finite.all():
            keep.append(int(idx[np.flatnonzero(~finite)[0]]))  # a gap stays a gap
        if finite.any():
            keep += [
                int(idx[np.nanargmin(np.where(finite, chunk, np.nan))]),
                int(idx[np.nanargmax(np.where(finite, chunk, np.nan))]),
            ]
    order = sorted(set(keep))
    return steps[order], values[order]


def _line_path(line: Line, x, y) -> str:  # noqa: ANN001 (the scale functions)
    steps, values = _thin(np.asarray(line.steps, dtype=float), np.asarray(line.values, dtype=float))
    out, pen = [], "M"
    for s, v in zip(steps, values):
        if not (math.isfinite(s) and math.isfinite(v)):
            pen = "M"
            continue
        v = min(max(v, -1e12), 1e12)
        out.append(f"{pen}{x(s):.1f},{y(v, line.right):.1f}")
        pen = "L"
    return "".join(out)


def _area_path(area: Area, x, y) -> str:  # noqa: ANN001
    ok = np.isfinite(area.low) & np.isfinite(area.high) & np.isfinite(area.steps)
    steps, low, high = area.steps[ok], area.low[ok], area.high[ok]
    if not len(steps):
        return ""
    top = [f"{x(s):.1f},{y(h, area.right):.1f}" for s, h in zip(steps, high)]
    bottom = [f"{x(s):.1f},{y(lo, area.right):.1f}" for s, lo in zip(steps[::-1], low[::-1])]
    return "M" + "L".join(top + bottom) + "Z"


def completions_section(cells: Sequence[CellAnalysis]) -> list[str]:
    """What each cell's model writes: per sampled prompt, the reference's answer and the answers at the
    best and the final evaluation (words the reference's answer lacks marked), with their lengths."""
    sampled = [c for c in cells if c.source.completions.evaluations]
    if not sampled:
        return []
    parts = [
        '<section id="completions"><h2>What the model writes</h2>',
        '<p class="note">Greedy answers to the same held-out prompts: the reference\'s (step 0, the adapter '
        "off), at the best held-out evaluation and at the final one; length in tokens (max: it ran into "
        "max_new_tokens); words the reference's answer lacks are marked.</p>",
    ]
    for cell in sampled:
        log = cell.source.completions
        final = log.evaluations[-1]
        best = log.at(cell.best.step) if cell.best is not None else None
        columns = [("reference", log.reference)] if log.reference is not None else []
        if best is not None and best.step != final.step:
            columns.append((f"best (step {best.step})", best))
        columns.append((f"final (step {final.step})", final))
        head = "".join(f"<th>{esc(label)}</th>" for label, _ in columns)
        means = "".join(f"<td>mean {e.stats.mean:.1f} tokens</td>" for _, e in columns)
        parts += [
            f"<h3><code>{esc(cell.source.id)}</code></h3>",
            f'<table class="answers"><thead><tr><th>prompt</th>{head}</tr></thead><tbody><tr><td></td>{means}</tr>',
        ]
        reference = {c.id: c.text for c in log.reference.completions} if log.reference is not None else {}
        ids = dict.fromkeys(c.id for _, e in columns for c in e.completions)
        for prompt_id in ids:
            prompt = next((c.prompt for _, e in columns for c in e.completions if c.id == prompt_id), "")
            cells_html = []
            for label, evaluation in columns:
                answer = next((c for c in evaluation.completions if c.id == prompt_id), None)
                if answer is None:
                    cells_html.append("<td></td>")
                    continue
                marked = answer.text if label == "reference" else None
                text = esc(marked) if marked is not None else _marked(answer.text, reference.get(prompt_id))
                length = f"{answer.tokens}{'' if answer.eos else ' max'}"
                cells_html.append(f"<td>{text} <small>({esc(length)})</small></td>")
            parts.append(f"<tr><td><code>{esc(prompt_id)}</code> {esc(prompt)}</td>{''.join(cells_html)}</tr>")
        parts.append("</tbody></table>")
    parts.append("</section>")
    return parts


def _marked(text: str, reference: str | None) -> str:
    """``text`` escaped, its words that ``reference`` lacks in <ins> (the pane's highlight, as HTML)."""
    shown = plain(text)
    if reference is None:
        return html.escape(shown, quote=True)
    out, at = [], 0
    for start, end in new_words(shown, plain(reference)):
        out += [html.escape(shown[at:start], quote=True), f"<ins>{html.escape(shown[start:end], quote=True)}</ins>"]
        at = end
    out.append(html.escape(shown[at:], quote=True))
    return "".join(out)
