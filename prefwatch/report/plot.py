"""A picture of every cell's train and held-out curves with its findings marked (``report --plot``).

matplotlib is an optional extra (``pip install "prefwatch[plot]"``); it is imported only here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefwatch.analysis import bands
from prefwatch.analysis.analyse import CellAnalysis, GridAnalysis
from prefwatch.core import metrics as m
from prefwatch.core.diagnose import heldout_accuracy_series
from prefwatch.core.textsafe import plain

SEVERITY_COLOURS = {"error": "tab:red", "warn": "tab:orange", "info": "tab:blue"}


class PlotUnavailable(RuntimeError):
    pass


def save_plot(analysis: GridAnalysis, path: Path) -> None:
    plt = _pyplot()
    figure = draw(analysis)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _pyplot():  # noqa: ANN202 (matplotlib.pyplot, imported here only)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable('--plot needs matplotlib: pip install "prefwatch[plot]"') from None
    return plt


def draw(analysis: GridAnalysis):  # noqa: ANN201 (a matplotlib Figure)
    """Every cell's panel; with several seeds per setting, a row of bands (one per setting) on top."""
    plt = _pyplot()
    groups = bands.analysed_settings(analysis.cells)
    objectives = list(dict.fromkeys(c.source.objective for c in analysis.cells))
    ranks = list(dict.fromkeys(c.source.rank for c in analysis.cells))
    rows, cols = len(objectives), max(1, len(analysis.cells) // max(1, len(objectives)))
    extra = 1 if groups else 0
    cols = max(cols, len(groups))
    figure, all_axes = plt.subplots(rows + extra, cols, figsize=(5.5 * cols, 3.6 * (rows + extra)), squeeze=False)
    if groups:
        for ax, group in zip(all_axes[0], groups):
            _draw_band(ax, group)
        for ax in all_axes[0][len(groups) :]:
            ax.set_visible(False)
    axes = all_axes[extra:]
    placed: dict[tuple[int, int], CellAnalysis] = {}
    for cell in analysis.cells:
        row = objectives.index(cell.source.objective)
        col = (
            next(c for c in range(cols) if (row, c) not in placed)
            if len(ranks) != cols
            else ranks.index(cell.source.rank)
        )
        placed[row, col] = cell
        _draw_cell(axes[row][col], cell)
    for (row, col), ax in np.ndenumerate(np.array(axes, dtype=object)):
        if (row, col) not in placed:
            ax.set_visible(False)
    # Names and objectives are data: no mathtext ("$...$" would be parsed, and fail), controls made visible.
    figure.suptitle(plain(f"{analysis.grid.name}: {analysis.verdict.headline}"), fontsize=11, parse_math=False)
    figure.tight_layout()
    return figure


def _draw_band(ax, group: bands.Setting[CellAnalysis]) -> None:  # noqa: ANN001 (a matplotlib Axes)
    """One setting's held-out accuracy across seeds: the mean line and the min–max band."""
    band = bands.band([heldout_accuracy_series(c.source.series, c.source.pairs) for c in group.cells])
    ax.fill_between(band.steps, band.low, band.high, color="tab:purple", alpha=0.25, label=bands.SPREAD)
    ax.plot(band.steps, band.mean, "o-", color="tab:purple", markersize=3, label="mean across seeds")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{group.label}: held-out accuracy", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def _draw_cell(ax, cell: CellAnalysis) -> None:  # noqa: ANN001 (a matplotlib Axes)
    series = cell.source.series
    train = series.train
    margins = train.column(m.MARGINS)
    ax.plot(train.steps, margins, color="tab:blue", alpha=0.25, linewidth=0.8)
    ax.plot(train.steps, ema(margins, 0.9), color="tab:blue", linewidth=1.4, label="train margin (EMA)")
    ax.plot(
        series.eval.steps, series.eval.column(m.MARGINS), "o-", color="tab:green", markersize=3, label="held-out margin"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("reward margin")
    accuracy_axis = ax.twinx()
    steps, accuracy = heldout_accuracy_series(series, cell.source.pairs)
    accuracy_axis.plot(steps, accuracy, "s--", color="tab:purple", markersize=3, label="held-out accuracy")
    accuracy_axis.set_ylim(0, 1)
    accuracy_axis.set_ylabel("held-out accuracy")
    review = cell.diagnosis.review
    if review.peak_heldout_step is not None:
        ax.axvline(review.peak_heldout_step, color="tab:purple", linestyle=":", linewidth=1)
    for finding in cell.diagnosis.findings:
        if finding.step is not None:
            ax.axvline(finding.step, color=SEVERITY_COLOURS[finding.severity], linewidth=1.2, alpha=0.8)
    kinds = ", ".join(sorted({f.kind for f in cell.diagnosis.findings})) or "no findings"
    ax.set_title(plain(f"{cell.source.id} ({cell.state}): {kinds}"), fontsize=9, parse_math=False)
    handles = ax.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="upper left")


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Causal exponential moving average with TensorBoard's debiasing; NaN points are skipped."""
    out = np.full(len(values), np.nan)
    last, steps = 0.0, 0
    for i, value in enumerate(values):
        if not np.isfinite(value):
            continue
        steps += 1
        last = last * weight + (1 - weight) * value
        out[i] = last / (1 - weight**steps)
    return out
