"""Looking closer at a cell: smoothing, scales, cursor, range table, metric picker, filter, export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("textual")

from test_tui import app_for, make_grid, panels, run, screen_text, wait_for  # noqa: E402

from prefwatch.tui import closer  # noqa: E402
from prefwatch.tui.screens.cell import CellScreen  # noqa: E402
from prefwatch.view.model import Curve  # noqa: E402


def test_ema_is_debiased_causal_and_skips_nan():
    values = np.array([1.0, 1.0, np.nan, 1.0, 1.0])
    assert np.allclose(closer.ema(values, 0.9)[[0, 1, 3, 4]], 1.0)  # debiased: a constant stays itself
    assert np.isnan(closer.ema(values, 0.9)[2])
    step = np.r_[np.zeros(50), np.ones(50)]
    smoothed = closer.ema(step, 0.6)
    assert np.all(smoothed[:50] == 0) and 0 < smoothed[50] < 1 and smoothed[-1] > 0.99  # causal: no look-ahead
    # The blockwise numpy version equals the plain loop, over many blocks.
    x = np.random.default_rng(0).normal(size=5000)
    state, expected = 0.0, []
    for n, v in enumerate(x, 1):
        state = 0.6 * state + 0.4 * v
        expected.append(state / (1 - 0.6**n))
    assert np.allclose(closer.ema(x, 0.6), expected)


def test_robust_range_ignores_a_spike_and_log_drops_non_positive():
    values = np.r_[np.linspace(0, 1, 1000), 1e6]
    low, high = closer.robust_range([Curve(np.arange(1001.0), values)])
    assert high < 2
    assert np.isnan(closer.log_values(np.array([-1.0, 0.0]))).all()
    assert closer.log_values(np.array([100.0]))[0] == 2


def test_range_row_value_at_and_matching():
    curve = Curve(np.array([10.0, 20.0, 30.0, 40.0]), np.array([0.5, 0.7, np.nan, 0.6]))
    row = closer.range_row("held-out", curve, 2)
    assert (row.low, row.high, row.last) == (0.5, 0.7, 0.6)
    assert row.change == pytest.approx(0.1)  # over the last 2 finite points: 0.5 -> 0.6
    assert closer.value_at(curve, 22) == (20.0, 0.7)
    names = ["rewards/margins", "rewards/chosen", "loss"]
    assert closer.matching(names, "^rew.*ns$") == ["rewards/margins"]
    assert closer.matching(names, "[") == []  # an invalid pattern is matched as text


@run
async def test_cell_screen_picks_smooths_scales_and_reads_values(tmp_path):
    app = app_for(make_grid(tmp_path), export_dir=tmp_path / "out")
    async with app.run_test(size=(120, 48)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CellScreen))
        screen = app.screen
        await pilot.pause()
        text = screen_text(app)
        assert "rewards/margins" in text and "held-out" in text and "best held-out step" in text
        assert "min" in text and "Δ last 3 ev" in text
        await pilot.press("right_square_bracket")
        assert screen.metric != "rewards/margins"
        await pilot.press("slash")
        await pilot.press(*"^loss$", "enter")
        await pilot.pause()
        assert screen.metric == "loss" and screen.names == ["loss"]
        await pilot.press("slash", "ctrl+u", *"margins", "enter")
        await pilot.pause()
        assert screen.metric == "rewards/margins"
        await pilot.press("e", "L", "o", "t")
        await pilot.pause()
        text = screen_text(app)
        assert "smoothing 0.6" in text and "log" in text and "1st–99th" in text and "wall time" in text
        await pilot.press("t", "left", "left")
        await pilot.pause()
        assert screen.cursor is not None
        assert "cursor step" in screen_text(app)
        await pilot.press("x")
        await wait_for(pilot, lambda: len(list((tmp_path / "out").glob("*.csv"))) == 1)
        rows = list(csv.DictReader(next((tmp_path / "out").glob("*.csv")).open()))
        assert {r["split"] for r in rows} == {"train", "eval"} and rows[0]["smoothed"]
        data = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
        assert data["metric"] == "rewards/margins" and data["smoothing"] == 0.6
        await pilot.press("S")
        await wait_for(pilot, lambda: len(list((tmp_path / "out").glob("*.svg"))) == 1)
        messages = [n.message for n in app._notifications]
        assert any(str(tmp_path / "out") in message for message in messages)  # the user is told where


@run
async def test_compare_puts_one_metric_of_every_cell_on_charts_by_objective(tmp_path):
    from prefwatch.tui.screens.compare import CompareScreen

    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        await wait_for(pilot, lambda: "simpo-r8" in screen_text(app))
        text = screen_text(app)
        assert "rewards/margins" in text and "dpo " in text and "simpo " in text  # one chart per objective
        assert sum(g.display for g in app.screen.query(".group")) == 2
        screen = app.screen
        while "accurac" not in screen.metric:
            await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: sum(g.display for g in screen.query(".group")) == 1)
        assert "all cells" in screen_text(app)
        await pilot.press("v")
        await wait_for(pilot, lambda: "held-out" in screen_text(app))
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, CompareScreen))
