"""The monitor's pure parts: braille rasterising, value formatting, grid layout, literal text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("textual")

from prefwatch.core.textsafe import plain as printable  # noqa: E402
from prefwatch.tui import braille  # noqa: E402
from prefwatch.tui.text import literal, terminal_line  # noqa: E402
from prefwatch.view import model  # noqa: E402
from prefwatch.view.model import CellView, Curve, format_value, grid_positions  # noqa: E402


def rows(x, y, width=20, height=2, x_range=None, y_range=None) -> list[str]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    lo, hi = x_range or (x[0], x[-1])
    spans = braille.column_spans(x, y, lo, hi, width * 2)
    low, high = y_range or braille.value_range([spans]) or (0, 1)
    return braille.braille_text(braille.braille_codes(braille.pixel_grid(spans, low, high, height * 4)))


def test_a_rising_line_goes_from_bottom_left_to_top_right():
    top, bottom = rows(range(100), range(100))
    assert top[0] == " " and top[-1] != " "
    assert bottom[0] != " " and bottom[-1] == " "


def test_nan_is_a_gap_and_infinity_does_not_break_the_scale():
    y = np.linspace(0, 1, 100)
    y[40:60] = np.nan
    y[80] = np.inf
    (line,) = rows(range(100), y, width=50, height=1)
    assert line[22:28].strip() == ""  # the NaN run
    assert line[:18].strip() and line[32:].strip()
    spans = braille.column_spans(np.arange(100.0), y, 0, 99, 100)
    assert np.nanmax(spans.highs) <= 1.0


def test_a_sparse_series_is_joined_into_a_line():
    (line,) = rows([0, 100, 200], [0.0, 1.0, 0.0], width=30, height=1)
    assert " " not in line.strip()  # no holes between the three points


def test_all_nan_or_empty_draws_nothing():
    assert braille.value_range([braille.column_spans(np.arange(5.0), np.full(5, np.nan), 0, 4, 10)]) is None
    assert braille.value_range([braille.column_spans(np.empty(0), np.empty(0), 0, 1, 10)]) is None


def test_a_flat_series_sits_mid_height():
    spans = braille.column_spans(np.arange(10.0), np.ones(10), 0, 9, 20)
    low, high = braille.value_range([spans])
    assert low < 1 < high


def test_a_spike_in_a_million_points_survives():
    """Its speed is measured by bench/bench_chart.py, not here."""
    y = np.zeros(1_000_000)
    y[123_456] = 50.0
    y[654_321] = -7.0
    x = np.arange(len(y), dtype=float)
    spans = braille.column_spans(x, y, 0, len(y) - 1, 160)
    assert np.nanmax(spans.highs) == 50.0 and np.nanmin(spans.lows) == -7.0
    # in the columns their x rounds to (x * 159 / 999999: 19.6 -> 20 and 104.04 -> 104)
    assert spans.highs[20] == 50.0 and spans.lows[104] == -7.0
    assert np.nanmax(np.delete(spans.highs, [19, 20, 21])) == 0.0  # and nowhere else but its joins


@pytest.mark.parametrize(
    "value, signed, text",
    [
        (None, True, "–"),
        (float("nan"), True, "nan"),
        (float("inf"), True, "+inf"),
        (-float("inf"), True, "-inf"),
        (0.5, False, "0.500"),
        (0.5, True, "+0.500"),
        (-12.25, True, "-12.250"),
        (123.45, True, "+123.5"),
        (12345.0, True, "+1.23e+04"),
        (0.0, True, "+0.000"),
        (1e-5, True, "+1.00e-05"),
    ],
)
def test_format_value(value, signed, text):
    assert format_value(value, signed) == text
    assert len(text) <= 9


def view(cell_id, objective, rank, seed=None) -> CellView:
    return CellView(
        cell_id, Path(cell_id), objective, rank, seed, "running", "running", 0, None, False, {}, (), None, 0, 0, ()
    )


def test_grid_positions_rows_are_objectives_columns_ranks_then_seeds():
    cells = [
        view("dpo-r16-s0", "dpo", 16, 0),
        view("dpo-r16-s1", "dpo", 16, 1),
        view("dpo-r8-s0", "dpo", 8, 0),
        view("simpo-r8-s0", "simpo", 8, 0),
    ]
    positions, n_rows, n_columns = grid_positions(cells, ["dpo", "simpo"], [16, 8])
    assert positions == {"dpo-r16-s0": (0, 0), "dpo-r16-s1": (0, 1), "dpo-r8-s0": (0, 2), "simpo-r8-s0": (1, 2)}
    assert (n_rows, n_columns) == (2, 3)


def test_unlabelled_runs_are_laid_out_in_a_block():
    cells = [view(f"run{i}", None, None) for i in range(5)]
    positions, n_rows, n_columns = grid_positions(cells, ["?"], [None])
    assert (n_rows, n_columns) == (2, 3)
    assert len(set(positions.values())) == 5


def test_colliding_labels_get_their_own_column():
    cells = [view("a", "dpo", 16), view("b", "dpo", 16)]
    positions, _, n_columns = grid_positions(cells, ["dpo"], [16])
    assert positions["a"] != positions["b"] and n_columns == 2


def test_printable_shows_controls_as_escapes():
    assert printable("a\x1b[31mb") == "a\\x1b[31mb"
    assert printable("x\u202ey\tz\x00") == "x\\u202ey z\\x00"
    assert printable("[bold]ok[/]") == "[bold]ok[/]"
    assert literal("[bold]x[/]").plain == "[bold]x[/]"


def test_terminal_line_keeps_what_a_terminal_would_show():
    assert terminal_line("10%|#  \r50%|#####  \r") == "50%|#####  "
    assert terminal_line("\x1b[32mok\x1b[0m done") == "ok done"


def test_curve_latest_is_the_last_value_even_when_nan():
    assert np.isnan(Curve(np.arange(3.0), np.array([1.0, 2.0, np.nan])).latest)
    assert Curve(np.empty(0), np.empty(0)).latest is None


def test_a_cell_whose_objective_is_unknown_is_named_so_never_question_mark():
    """Issue 12: an objective nothing tells is 'unknown-objective' on screen too (compare's chart
    titles), never a bare '?' placeholder."""
    from prefwatch.tui.screens.compare import groups
    from prefwatch.view.model import GridView

    cells = (view("dpo-r16", "dpo", 16), view("run-a", None, 16))
    grid = GridView.__new__(GridView)
    object.__setattr__(grid, "cells", cells)
    titles = [title for title, _ in groups(grid, "rewards/margins")]
    assert titles == ["dpo", "unknown-objective"]


def test_a_row_raster_says_unchanged_only_when_a_full_raster_draws_the_same_codes():
    """RowRaster.extended is the monitor's shortcut past raster() for a point appended to a live row.

    Drawn from random walks (flat runs, NaN, infinities, a fixed scale, edge sizes): whenever it
    answers True the full raster of the longer curve has exactly its codes; it must answer True
    often enough to matter (most points of a long row move no dot)."""
    from prefwatch.tui.widgets.chart import RowRaster, raster

    rng = np.random.default_rng(13)
    shortcuts = checks = 0
    for case in range(400):
        n = int(rng.integers(1, 400))
        steps = np.cumsum(rng.integers(1, 3, size=n + 40)).astype(float)
        values = np.cumsum(rng.normal(size=n + 40)) * float(rng.choice([1e-3, 1.0, 50.0]))
        if case % 7 == 0:
            values[rng.integers(0, n + 40, size=3)] = np.nan
        if case % 11 == 0:
            values[rng.integers(0, n + 40)] = np.inf
        if case % 13 == 0:
            values[:] = 0.25  # flat: value_range pads it
        fixed = (0.0, 1.0) if case % 5 == 0 else None
        if fixed:
            values = np.clip(values, 0.0, 1.0)
        width, height = int(rng.integers(1, 90)), int(rng.integers(1, 5))
        x_range = (0.0, model.nice_ceiling(float(steps[n - 1])) * float(rng.choice([1.0, 1.5])))
        state = RowRaster(Curve(steps[:n], values[:n]), x_range, fixed, width, height)
        expected, _ = raster([Curve(steps[:n], values[:n])], x_range, fixed, width, height, snap=True)
        assert all(np.array_equal(a, b) for a, b in zip(state.codes, expected)) and len(state.codes) == len(expected)
        for more in range(n + 1, n + 40):
            curve = Curve(steps[:more], values[:more])
            checks += 1
            if state.extended(curve, x_range, fixed, width, height):
                shortcuts += 1
                codes, _ = raster([curve], x_range, fixed, width, height, snap=True)
                assert len(codes) == len(state.codes) and all(np.array_equal(a, b) for a, b in zip(codes, state.codes))
            else:
                state = RowRaster(curve, x_range, fixed, width, height)
    assert shortcuts > checks // 4


def test_a_row_raster_notices_a_row_completed_in_place():
    from prefwatch.tui.widgets.chart import RowRaster

    steps, values = np.arange(1.0, 101.0), np.linspace(0.0, 1.0, 100)
    values[-1] = np.nan
    state = RowRaster(Curve(steps[:100], values[:100]), (0.0, 1000.0), None, 40, 2)
    values[-1] = 0.5  # the same array: the last row's value arrived later (TensorBoard)
    assert not state.extended(Curve(steps[:100], values[:100]), (0.0, 1000.0), None, 40, 2)
