"""BrailleChart: one or more curves drawn with braille dots, as fast for a million points as for ten.

Textual's Sparkline and the plotting packages were measured too slow for a live grid and raise on
NaN (see docs/charts.md). This widget reduces each curve to its pixel columns with
numpy (prefwatch.tui.braille), caches the resulting strips, and draws again only when the data or
its size changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from prefwatch.tui import braille
from prefwatch.view.model import Curve


class BrailleChart(Widget):
    """Curves over a shared x range; NaN is a gap, each curve has its own colour.

    Curves are coloured by the component classes ``braille-chart--curve-0`` … ``-3`` in order, so a
    theme or the app's CSS can restyle them. ``y_range`` fixes the scale (accuracy: 0 to 1);
    otherwise it fits what is drawn.
    """

    COMPONENT_CLASSES = {
        "braille-chart--curve-0",
        "braille-chart--curve-1",
        "braille-chart--curve-2",
        "braille-chart--curve-3",
        "braille-chart--raw-0",
        "braille-chart--raw-1",
        "braille-chart--raw-2",
        "braille-chart--raw-3",
        "braille-chart--cursor",
        "braille-chart--peak",
    }

    DEFAULT_CSS = """
    BrailleChart {
        height: 1;
        min-height: 1;
        width: 1fr;
    }
    BrailleChart > .braille-chart--curve-0 { color: $accent; }
    BrailleChart > .braille-chart--curve-1 { color: $warning; }
    BrailleChart > .braille-chart--curve-2 { color: $success; }
    BrailleChart > .braille-chart--curve-3 { color: $secondary; }
    BrailleChart > .braille-chart--raw-0 { color: $accent 45%; }
    BrailleChart > .braille-chart--raw-1 { color: $warning 45%; }
    BrailleChart > .braille-chart--raw-2 { color: $success 45%; }
    BrailleChart > .braille-chart--raw-3 { color: $secondary 45%; }
    BrailleChart > .braille-chart--cursor { background: $foreground 35%; }
    BrailleChart > .braille-chart--peak { background: $success 35%; }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._curves: tuple[Curve, ...] = ()
        self._x_range: tuple[float, float] = (0.0, 1.0)
        self._y_range: tuple[float, float] | None = None
        self._data_key: tuple[object, ...] = ()
        self._strips: list[Strip] | None = None
        self._strips_size: tuple[int, int] = (0, 0)
        self.drawn_range: tuple[float, float] | None = None
        self._curve_classes: tuple[str, ...] | None = None
        self._markers: tuple[tuple[float, str], ...] = ()

    def set_curves(
        self,
        curves: Sequence[Curve],
        x_range: tuple[float, float],
        y_range: tuple[float, float] | None = None,
        classes: Sequence[str] | None = None,
        markers: Sequence[tuple[float, str]] = (),
    ) -> None:
        """Show these curves; nothing is redrawn when they are the same data as before.

        ``classes`` names each curve's component class (default ``curve-0`` … in order); ``markers``
        highlights the columns at some x values (``cursor``, ``peak``) across the chart's height.
        """
        key = (
            tuple((len(c), _last(c), id(c.values), id(c.values.base)) for c in curves),
            x_range,
            y_range,
            tuple(classes or ()),
            tuple(markers),
        )
        if key == self._data_key:
            return
        self._curve_classes = tuple(classes) if classes else None
        self._markers = tuple(markers)
        self._curves, self._x_range, self._y_range = tuple(curves), x_range, y_range
        self._data_key = key
        self._strips = None
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None

    def render_line(self, y: int) -> Strip:
        strips = self._render_strips()
        return strips[y] if y < len(strips) else Strip.blank(self.size.width, self.rich_style)

    def _render_strips(self) -> list[Strip]:
        width, height = self.size
        if self._strips is None or self._strips_size != (width, height):
            self._strips = self._draw(width, height)
            self._strips_size = (width, height)
        return self._strips

    def _draw(self, width: int, height: int) -> list[Strip]:
        names = self._curve_classes or [f"curve-{i % 4}" for i in range(len(self._curves))]
        styles = [self.get_component_rich_style(f"braille-chart--{name}", partial=True) for name in names]
        strips, self.drawn_range = draw_curves(
            self._curves, self._x_range, self._y_range, width, height, styles, self.rich_style
        )
        x_min, x_max = self._x_range
        for x, name in self._markers:
            if width <= 0 or not x_max > x_min or not x_min <= x <= x_max:
                continue
            column = min(width - 1, int(round((x - x_min) / (x_max - x_min) * (width * 2 - 1))) // 2)
            style = self.get_component_rich_style(f"braille-chart--{name}", partial=True)
            strips = [mark_column(strip, column, style) for strip in strips]
        return strips


def mark_column(strip: Strip, column: int, style: Style) -> Strip:
    """The strip with one cell restyled (a cursor or a marker line drawn down the chart)."""
    before, cell, after = strip.divide([column, column + 1, strip.cell_length])[:3]
    return Strip.join([before, cell.apply_style(style), after])


def draw_curves(
    curves: Sequence[Curve],
    x_range: tuple[float, float],
    y_range: tuple[float, float] | None,
    width: int,
    height: int,
    styles: Sequence[Style],
    base: Style,
) -> tuple[list[Strip], tuple[float, float] | None]:
    """Strips (one per row) showing ``curves`` in ``width`` × ``height`` cells, and the value range drawn."""
    codes, value_range = raster(curves, x_range, y_range, width, height)
    return strips_of(codes, styles, base, width, height), value_range


def raster(
    curves: Sequence[Curve],
    x_range: tuple[float, float],
    y_range: tuple[float, float] | None,
    width: int,
    height: int,
    snap: bool = False,
) -> tuple[list[np.ndarray], tuple[float, float] | None]:
    """The braille codes (height × width) of each curve, and the value range drawn; [] when nothing shows.

    Cheap (numpy, independent of the number of points): a widget compares the codes with the ones
    on screen and repaints the chart only when a dot changed. ``snap`` widens a range found from
    the data to round bounds (braille.snapped_range), so that a new point rarely moves every dot.
    """
    x_min, x_max = x_range
    spans = [braille.column_spans(c.steps, c.values, x_min, x_max, width * 2) for c in curves]
    value_range = y_range or braille.value_range(spans)
    if snap and y_range is None and value_range is not None:
        value_range = braille.snapped_range(*value_range)
    if value_range is None or width <= 0 or not curves:
        return [], value_range
    low, high = value_range
    return [braille.braille_codes(braille.pixel_grid(s, low, high, height * 4)) for s in spans], value_range


TAIL = 16  # values at the end of a rastered curve kept to notice rows completed in place


class RowRaster:
    """The codes of one curve at one size, and what they were computed from, so that a few points
    appended to the same curve are checked against them in microseconds instead of rastered again.

    A live row gains a point a second and its dots rarely move; ``raster`` costs about 0.1 ms a call
    (twenty numpy calls), a fast check a few microseconds. ``extended`` is exact: it answers True
    only when a full raster would give the same codes. That holds when every new point lands in
    the pixel column of the last one (columns to its left are final: each column's span comes from
    its own points and the lines to its neighbours), the value range is unchanged, and that
    column's lit pixel rows are the same. Anything else (a new column, a new low, NaN, another
    array, rows completed in place) answers False: the caller rasters again.
    """

    def __init__(
        self, curve: Curve, x_range: tuple[float, float], y_range: tuple[float, float] | None, width: int, height: int
    ) -> None:
        x_min, x_max = x_range
        columns = width * 2
        spans = braille.column_spans(curve.steps, curve.values, x_min, x_max, columns)
        finite = np.isfinite(spans.lows)
        # The data's own range; drawn: what raster() draws (padded when flat, snapped to round units).
        found = (float(spans.lows[finite].min()), float(spans.highs[finite].max())) if finite.any() else None
        drawn = y_range or (braille.snapped_range(*braille.padded_range(*found)) if found is not None else None)
        self.key = (x_range, y_range, width, height, _owner(curve.steps), _owner(curve.values))
        self.codes: list[np.ndarray] = []
        if drawn is not None and width > 0:
            low, high = drawn
            self.codes = [braille.braille_codes(braille.pixel_grid(spans, low, high, height * 4))]
        self.drawn, self.found = drawn, found
        self.rows = height * 4
        self.points = len(curve)
        self._x_min = x_min
        self._scale = (columns - 1) / (x_max - x_min) if x_max > x_min else 0.0
        self._tail = _tail(curve)
        self._column = -1  # pixel column of the last point, when it is drawn there
        if len(curve) and self._scale and columns > 0:
            last = float(curve.steps[-1])
            column = int(np.searchsorted(x_min + (np.arange(columns + 1) - 0.5) / self._scale, last, side="right")) - 1
            if 0 <= column < columns and np.isfinite(spans.lows[column]):
                self._column = column
                self._span = (float(spans.lows[column]), float(spans.highs[column]))

    def extended(
        self, curve: Curve, x_range: tuple[float, float], y_range: tuple[float, float] | None, width: int, height: int
    ) -> bool:
        """Whether ``curve`` (this one with points appended) draws exactly these codes; if so, take it in."""
        if self._column < 0 or self.drawn is None or self.found is None or not self.codes:
            return False
        if (x_range, y_range, width, height, _owner(curve.steps), _owner(curve.values)) != self.key:
            return False
        n, old = len(curve), self.points
        if n < old or n - old > TAIL:
            return False
        steps, values = curve.steps, curve.values
        kept_steps, kept_values = self._tail
        start = max(0, old - TAIL)
        # Bytes, not np.array_equal: the same values copied compare equal (NaN too), in a fraction of
        # the time; any other difference (even -0.0 for 0.0) only sends the caller to a full raster.
        if steps[start:old].tobytes() != kept_steps or values[start:old].tobytes() != kept_values:
            return False  # rows completed or changed in place
        if n == old:
            return True
        # Python floats from here: a handful of numbers, where numpy's per-call cost would dominate.
        new_steps, new_values = steps[old:].tolist(), values[old:].tolist()
        column = self._column
        left = self._x_min + (column - 0.5) / self._scale  # the bounds column_spans uses, computed the same way
        right = self._x_min + (column + 1 - 0.5) / self._scale
        if not (left <= new_steps[0] and new_steps[-1] < right) or not all(map(math.isfinite, new_values)):
            return False
        low, high = self._span
        new_low, new_high = min(low, min(new_values)), max(high, max(new_values))
        found = min(self.found[0], new_low), max(self.found[1], new_high)
        if y_range is None and found != self.found:
            # The data's range grows; the scale moves only when the snapped range does.
            if braille.snapped_range(*braille.padded_range(*found)) != self.drawn:
                return False
        if _pixel_rows(low, high, self.drawn, self.rows) != _pixel_rows(new_low, new_high, self.drawn, self.rows):
            return False
        self.points, self._span, self.found = n, (new_low, new_high), found
        self._tail = _tail(curve)
        return True


def _tail(curve: Curve) -> tuple[bytes, bytes]:
    """The last TAIL steps and values as bytes: what ``extended`` checks to notice rows changed in place."""
    return curve.steps[-TAIL:].tobytes(), curve.values[-TAIL:].tobytes()


def _owner(array: np.ndarray) -> int:
    """Which buffer an array shows (a series' column grows by reallocation: a new buffer is new data)."""
    return id(array.base if array.base is not None else array)


def _pixel_rows(low: float, high: float, drawn: tuple[float, float], rows: int) -> tuple[int, int]:
    """The top and bottom pixel rows braille.pixel_grid lights for a column spanning ``low``..``high``.

    The same float operations in the same order as pixel_grid's (numpy float64 is IEEE double, and
    ``round`` rounds half to even like ``np.rint``), on Python floats: a few numbers, called twice
    per new point of every row.
    """
    bottom_value, top_value = drawn
    span = top_value - bottom_value if top_value > bottom_value else 1.0
    top = round((top_value - high) / span * (rows - 1))
    bottom = round((top_value - low) / span * (rows - 1))
    return min(max(top, 0), rows - 1), min(max(bottom, 0), rows - 1)


def strips_of(codes: list[np.ndarray], styles: Sequence[Style], base: Style, width: int, height: int) -> list[Strip]:
    if not codes:
        return [Strip.blank(width, base) for _ in range(height)]
    return _strips(codes, [base + style for style in styles], base, width)


def same_codes(a: list[np.ndarray], b: list[np.ndarray] | None) -> bool:
    return b is not None and len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _last(curve: Curve) -> float:
    value = curve.latest
    return float("nan") if value is None else value


def _strips(codes: list[np.ndarray], styles: list[Style], base: Style, width: int) -> list[Strip]:
    """Overlay the curves' dots (later curves on top where they share a cell) and group runs of one colour."""
    combined = np.zeros_like(codes[0])
    owner = np.full(codes[0].shape, -1)
    for index, layer in enumerate(codes):
        combined |= layer
        owner = np.where(layer > 0, index, owner)
    texts = braille.braille_text(combined)
    strips = []
    for row, text in enumerate(texts):
        segments = []
        owners = owner[row]
        cuts = np.flatnonzero(np.diff(owners)) + 1
        for start, end in zip(np.r_[0, cuts], np.r_[cuts, len(owners)]):
            who = owners[start]
            segments.append(Segment(text[start:end], styles[who] if who >= 0 else base))
        strips.append(Strip(segments, width))
    return strips
