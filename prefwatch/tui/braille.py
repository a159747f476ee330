"""Curves drawn with braille dots: each terminal cell holds a 2×4 grid of pixels.

Rasterising is numpy work and independent of the number of points (see docs/charts.md):

1. the x axis is cut into pixel columns; ``searchsorted`` finds each column's points (x is sorted)
   and ``fmin/fmax.reduceat`` gives each column's lowest and highest value, so a spike in a
   million points still shows;
2. neighbouring columns are joined by the straight line between the last point of one and the
   first point of the next, so a sparse series (ten evaluations over eighty columns) is a line
   and a steep step is a vertical stroke, not two dots;
3. a NaN or infinite value is a gap: the line breaks there, and no scale is computed from it.

Only step 2 loops in Python, at most once per pixel column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Bit of each dot in a braille cell (Unicode U+2800 block), indexed [row][column].
_DOT_BITS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint16)
BRAILLE_BASE = 0x2800


@dataclass(frozen=True)
class Spans:
    """Lowest and highest value drawn in each pixel column (NaN: nothing in that column)."""

    lows: np.ndarray
    highs: np.ndarray


def column_spans(x: np.ndarray, y: np.ndarray, x_min: float, x_max: float, columns: int) -> Spans:
    """Reduce a curve to ``columns`` pixel columns spanning [x_min, x_max]. ``x`` must be ascending."""
    lows = np.full(columns, np.nan)
    highs = np.full(columns, np.nan)
    if columns <= 0 or len(x) == 0:
        return Spans(lows, highs)
    scale = (columns - 1) / (x_max - x_min) if x_max > x_min else 0.0
    # Column c holds the points whose pixel position rounds to c.
    boundaries = x_min + (np.arange(columns + 1) - 0.5) / scale if scale else np.array([-np.inf] + [np.inf] * columns)
    edges = np.searchsorted(x, boundaries, side="left")
    starts, ends = edges[:-1], edges[1:]
    filled = np.flatnonzero(ends > starts)
    if len(filled) == 0:
        return Spans(lows, highs)
    y_in = y[: ends[filled[-1]]]
    with np.errstate(invalid="ignore"):
        lows[filled] = np.fmin.reduceat(y_in, starts[filled])
        highs[filled] = np.fmax.reduceat(y_in, starts[filled])
    # A column holding an infinity (or only NaN) is a gap.
    bad = ~(np.isfinite(lows) & np.isfinite(highs))
    lows[bad] = highs[bad] = np.nan
    _join_columns(x, y, filled, starts, ends, x_min, scale, lows, highs)
    return Spans(lows, highs)


def _join_columns(
    x: np.ndarray,
    y: np.ndarray,
    filled: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    x_min: float,
    scale: float,
    lows: np.ndarray,
    highs: np.ndarray,
) -> None:
    """Extend columns so that consecutive points in different columns are joined by a line.

    Vectorised: each pair of neighbouring filled columns contributes the line's value at every
    column edge between them, to the columns on both sides of that edge.
    """
    if len(filled) < 2:
        return
    left, right = filled[:-1], filled[1:]
    a, b = ends[left] - 1, starts[right]
    ya, yb = y[a], y[b]
    ok = np.isfinite(ya) & np.isfinite(yb)
    if not ok.any():
        return
    left, right, ya, yb = left[ok], right[ok], ya[ok], yb[ok]
    pa, pb = (x[a[ok]] - x_min) * scale, (x[b[ok]] - x_min) * scale
    counts = right - left
    pair = np.repeat(np.arange(len(left)), counts)
    # The columns left+1 .. right of each pair, concatenated.
    column = left[pair] + 1 + (np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts))
    spread = pb - pa
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(spread[pair] > 0, np.clip((column - 0.5 - pa[pair]) / spread[pair], 0.0, 1.0), 1.0)
    value = ya[pair] + t * (yb[pair] - ya[pair])
    for target in (column - 1, column):
        np.fmin.at(lows, target, value)
        np.fmax.at(highs, target, value)


def value_range(spans: list[Spans]) -> tuple[float, float] | None:
    """The range of what is drawn, widened when flat so that a constant curve sits mid-height."""
    lows = [s.lows for s in spans if np.isfinite(s.lows).any()]
    if not lows:
        return None
    low = float(min(np.nanmin(v) for v in lows))
    high = float(max(np.nanmax(s.highs) for s in spans if np.isfinite(s.highs).any()))
    return padded_range(low, high)


def padded_range(low: float, high: float) -> tuple[float, float]:
    """``low``..``high``, widened when flat so that a constant curve sits mid-height."""
    if high - low < 1e-12:
        pad = max(abs(high) * 0.05, 0.5)
        return low - pad, high + pad
    return low, high


def snapped_range(low: float, high: float, cells: int = 8) -> tuple[float, float]:
    """``low``..``high`` widened to multiples of a round unit (about an eighth of the span, 1-2-5).

    Like ``prefwatch.view.model.nice_ceiling`` for a value axis: the range moves by whole units, so a curve that creeps
    upwards redraws when it crosses a unit, not at every point.
    """
    span = high - low
    if not span > 0 or not np.isfinite(span):
        return low, high
    raw = span / cells
    scale = 10.0 ** np.floor(np.log10(raw))
    unit = next(step * scale for step in (1.0, 2.0, 5.0, 10.0) if step * scale >= raw)
    return float(np.floor(low / unit) * unit), float(np.ceil(high / unit) * unit)


def pixel_grid(spans: Spans, low: float, high: float, rows: int) -> np.ndarray:
    """Boolean pixels (rows × columns), row 0 at the top, each column lit from its low to its high."""
    columns = len(spans.lows)
    if rows <= 0 or columns == 0:
        return np.zeros((max(rows, 0), columns), dtype=bool)
    span = high - low if high > low else 1.0
    with np.errstate(invalid="ignore"):
        top = np.rint((high - spans.highs) / span * (rows - 1))
        bottom = np.rint((high - spans.lows) / span * (rows - 1))
    drawn = np.isfinite(top) & np.isfinite(bottom)
    top = np.where(drawn, np.clip(top, 0, rows - 1), rows)
    bottom = np.where(drawn, np.clip(bottom, 0, rows - 1), -1)
    row = np.arange(rows)[:, None]
    return (row >= top[None, :]) & (row <= bottom[None, :])


def braille_codes(pixels: np.ndarray) -> np.ndarray:
    """Pixels (4·H × 2·W) to the braille dot pattern of each cell (H × W), 0 meaning blank."""
    rows, columns = pixels.shape
    height, width = -(-rows // 4), -(-columns // 2)
    padded = np.zeros((height * 4, width * 2), dtype=bool)
    padded[:rows, :columns] = pixels
    blocks = padded.reshape(height, 4, width, 2).transpose(0, 2, 1, 3)
    return (blocks * _DOT_BITS).sum(axis=(2, 3)).astype(np.uint16)


def braille_text(codes: np.ndarray) -> list[str]:
    """One string per row; blank cells are spaces so that overlaid colours stay easy to read."""
    chars = np.ascontiguousarray(np.where(codes > 0, codes + BRAILLE_BASE, 0x20), dtype="<u4")
    if chars.ndim != 2 or chars.shape[1] == 0:
        return ["" for _ in range(len(chars))]
    # numpy's str dtype is UCS-4: each row of code points is one string, without a codec call per row.
    return chars.view(f"<U{chars.shape[1]}")[:, 0].tolist()
