"""Looking closer at one metric of one cell: smoothing, scales, the cursor, the range table, export.

Plain numpy, no Textual: the cell screen calls these and draws what they return; tests call them
directly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from prefwatch.view.model import Curve, format_value

SMOOTHING_STEPS = (0.0, 0.6, 0.9, 0.99)  # the `e` key cycles through these EMA weights


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Causal exponential moving average, debiased like TensorBoard's smoothing.

    s_t = w·s_(t-1) + (1-w)·x_t from s = 0, divided by 1 - w^n (n: finite points so far), so the
    start is not pulled towards zero. NaN and infinite points are skipped (they stay gaps), so one
    diverged value does not poison the rest. Vectorised in blocks short enough that w^-k stays finite.
    """
    values = np.asarray(values, dtype=float)
    out = np.full(len(values), np.nan)
    if weight <= 0 or not len(values):
        return values.copy()
    finite = np.flatnonzero(np.isfinite(values))
    x = values[finite]
    n = len(x)
    if not n:
        return out
    smoothed = np.empty(n)
    block = max(1, int(200 / -math.log10(weight))) if weight < 1 else n
    state = 0.0
    for start in range(0, n, block):
        chunk = x[start : start + block]
        k = np.arange(len(chunk))
        powers = weight ** -k.astype(float)
        running = np.cumsum(chunk * powers) * (1 - weight) / powers
        smoothed[start : start + len(chunk)] = running + state * weight ** (k + 1.0)
        state = smoothed[start + len(chunk) - 1]
    counts = np.arange(1, n + 1, dtype=float)
    with np.errstate(over="ignore", under="ignore"):
        smoothed /= 1 - weight**counts
    out[finite] = smoothed
    return out


def log_values(values: np.ndarray) -> np.ndarray:
    """Values for a log scale: log10 of positive values; zero and negative values become gaps."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)


def robust_range(curves: list[Curve], low: float = 1.0, high: float = 99.0) -> tuple[float, float] | None:
    """The 1st to 99th percentile of what is drawn: one spike does not flatten the rest of the curve."""
    finite = [c.values[np.isfinite(c.values)] for c in curves]
    finite = [v for v in finite if len(v)]
    if not finite:
        return None
    values = np.concatenate(finite)
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi - lo < 1e-12:
        return lo - 0.5, hi + 0.5
    return lo, hi


def value_at(curve: Curve, x: float, xs: np.ndarray | None = None) -> tuple[float, float] | None:
    """The point of ``curve`` nearest to ``x`` (on the curve's step axis, or ``xs`` when given)."""
    axis = curve.steps if xs is None else xs
    if not len(axis):
        return None
    i = int(np.searchsorted(axis, x))
    candidates = [j for j in (i - 1, i) if 0 <= j < len(axis)]
    j = min(candidates, key=lambda j: abs(axis[j] - x))
    return float(axis[j]), float(curve.values[j])


@dataclass(frozen=True)
class RangeRow:
    """One line of the range table: a split of the picked metric."""

    label: str
    low: float | None
    high: float | None
    last: float | None
    change: float | None  # over the last N points (evaluations, for held-out rows)

    def cells(self) -> list[str]:
        return [self.label, *(format_value(v) for v in (self.low, self.high, self.last, self.change))]


def range_row(label: str, curve: Curve | None, last_n: int) -> RangeRow:
    if curve is None or not len(curve):
        return RangeRow(label, None, None, None, None)
    finite = curve.values[np.isfinite(curve.values)]
    low = float(finite.min()) if len(finite) else None
    high = float(finite.max()) if len(finite) else None
    change = None
    if len(finite) > 1:
        back = finite[-min(last_n + 1, len(finite))]
        change = float(finite[-1] - back)
    return RangeRow(label, low, high, curve.latest, change)


def matching(names: list[str], pattern: str) -> list[str]:
    """Metric names that match a regular expression (case-insensitive; an invalid one matches as text)."""
    if not pattern:
        return names
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error:
        return [n for n in names if pattern.lower() in n.lower()]
    return [n for n in names if rx.search(n)]


def export_rows(columns: dict[str, Curve | None], weight: float) -> list[dict[str, float | str | None]]:
    """The picked metric's data as rows, one per (split, point): step, time, value and its smoothing."""
    rows: list[dict[str, float | str | None]] = []
    for split, curve in columns.items():
        if curve is None:
            continue
        smoothed = ema(curve.values, weight)
        times = curve.times if curve.times is not None else np.full(len(curve), np.nan)
        for step, time, value, smooth in zip(curve.steps, times, curve.values, smoothed):
            rows.append(
                {
                    "split": split,
                    "step": _json_number(step),
                    "time": _json_number(time),
                    "value": _json_number(value),
                    "smoothed": _json_number(smooth),
                }
            )
    return rows


def _json_number(value: float) -> float | str | None:
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def to_csv(rows: list[dict[str, float | str | None]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["split", "step", "time", "value", "smoothed"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_json(cell_id: str, metric: str, weight: float, rows: list[dict[str, float | str | None]]) -> str:
    return json.dumps({"cell": cell_id, "metric": metric, "smoothing": weight, "rows": rows}, indent=1) + "\n"


def safe_name(text: str) -> str:
    """A file-name-safe form of a cell id or metric name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "metric"
