"""Every key the help screen lists is pressed in the real app (Textual's Pilot) and its effect asserted.

The help screen is built from the bindings (prefwatch/tui/screens/help.py), and the first test fails
when an action in it has no check here: a new key cannot go untested, a removed one cannot stay in
the help.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("textual")

from crafted import Cell, live_process, write_grid  # noqa: E402
from helpers import status  # noqa: E402
from textual.command import CommandPalette  # noqa: E402
from textual.keys import _character_to_key  # noqa: E402

from prefwatch.ingest.discover import open_path  # noqa: E402
from prefwatch.tui.app import MonitorApp  # noqa: E402
from prefwatch.tui.screens.cell import CellScreen  # noqa: E402
from prefwatch.tui.screens.compare import CompareScreen  # noqa: E402
from prefwatch.tui.screens.confirm import ConfirmScreen  # noqa: E402
from prefwatch.tui.screens.help import HelpScreen, help_sections  # noqa: E402
from prefwatch.tui.screens.overview import OverviewScreen  # noqa: E402
from prefwatch.tui.widgets.cell_panel import CellPanel  # noqa: E402

GLYPHS = {"↑": "up", "↓": "down", "←": "left", "→": "right", "⏎": "enter", "esc": "escape", "⌫": "backspace"}


def key_name(label: str) -> str:
    """The key to press for a label the help shows."""
    if label in GLYPHS:
        return GLYPHS[label]
    return _character_to_key(label) if len(label) == 1 else label


def run(coroutine_function: Callable) -> Callable:
    @functools.wraps(coroutine_function)
    def test(*args, **kwargs):
        asyncio.run(coroutine_function(*args, **kwargs))

    return test


async def until(pilot, condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def grid(tmp_path: Path, **states: dict) -> Path:
    cells = [
        Cell("dpo-r16", "dpo", 16, 62, **states.get("dpo-r16", {})),
        Cell("dpo-r8", "dpo", 8, 60, **states.get("dpo-r8", {})),
        Cell("simpo-r16", "simpo", 16, 80, train_margin=2.0, heldout_margin=1.5),
        Cell("simpo-r8", "simpo", 8, 78, train_margin=2.0, heldout_margin=1.5, peaked=True),
    ]
    return write_grid(tmp_path, "keys", cells)


async def loaded(pilot) -> MonitorApp:
    app = pilot.app
    await until(pilot, lambda: app.view is not None and len(app.screen.query(CellPanel)) == 4, "the grid")
    await until(pilot, lambda: isinstance(app.screen.focused, CellPanel), "a selected panel")
    return app


def selected(app: MonitorApp) -> tuple[int, int]:
    focused = app.screen.focused
    assert isinstance(focused, CellPanel)
    return focused.position


def sections(app: MonitorApp) -> dict[str, dict[str, list[str]]]:
    """Section title -> action description -> keys to press, as the help screen lists them."""
    return {
        title: {text: [key_name(label) for label in labels] for labels, text in rows}
        for title, rows in help_sections(app)
    }


CHECKED = {
    "Keys": {
        "select the cell above",
        "select the cell below",
        "select the cell to the left",
        "select the cell to the right",
        "charts of the selected cell (escape to come back)",
        "quit the monitor — the jobs keep running",
        "stop the selected cell (asks first; launched grids only)",
        "compare one metric across all cells",
        "every cell in one row: sortable, grouped by factor",
        "what the selected cell's model writes, beside the reference's answers",
        "stop the whole grid (asks first)",
        "restart a failed, stopped or lost cell from its checkpoint (asks)",
        "light or dark theme",
        "a timed replay: play or pause",
        "a timed replay: faster",
        "a timed replay: slower",
        "a timed replay: jump forward",
        "a timed replay: jump back",
        "a timed replay: to the start",
        "a timed replay: to the end",
        "this help",
        "command palette: every action, the theme, screenshots",
    },
    "In a cell's charts (enter)": {
        "back to the grid",
        "previous metric",
        "next metric",
        "filter the metrics by a regular expression",
        "EMA smoothing: off, 0.6, 0.9, 0.99 (the raw curve stays, dimmed)",
        "log scale",
        "y scale from the 1st to the 99th percentile",
        "x axis: step or wall time",
        "cursor one column left: exact values",
        "cursor one column right",
        "cursor ten columns left",
        "cursor ten columns right",
        "export the view's data as CSV and JSON",
        "the screen as SVG",
    },
    "In compare (c)": {
        "back to the grid",
        "previous metric",
        "next metric",
        "train or held-out curves",
        "several seeds: one band per setting, or each seed",
    },
    "Here": {"close this help"},
}


@run
async def test_the_help_lists_exactly_the_keys_checked_here(tmp_path):
    app = MonitorApp(open_path(grid(tmp_path)), mode="replay")
    async with app.run_test(size=(120, 50)) as pilot:
        await loaded(pilot)
        listed = {title: set(rows) for title, rows in sections(app).items()}
        assert listed == CHECKED
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        shown = str(app.screen.query_one("#keys").render())
        for title, rows in help_sections(app):
            assert title in shown
            for labels, text in rows:
                assert f"{' '.join(labels):<18} {text}" in shown


@run
async def test_the_completions_key_opens_the_selected_cells_answers_and_escape_comes_back(tmp_path):
    from prefwatch.tui.screens.completions import CompletionsScreen

    app = MonitorApp(open_path(grid(tmp_path)), mode="replay")
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        (key,) = sections(app)["Keys"]["what the selected cell's model writes, beside the reference's answers"]
        await pilot.press("right", key)  # dpo-r8
        await until(pilot, lambda: isinstance(app.screen, CompletionsScreen), "the completions pane")
        assert "dpo-r8" in str(app.screen.query_one("#title").render())
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CompletionsScreen), "the grid again")
        assert selected(app) == (0, 1)


@run
async def test_grid_and_replay_keys(tmp_path):
    app = MonitorApp(open_path(grid(tmp_path)), mode="replay", speed=1.0)
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: app.replay is not None, "the replay clock")
        keys = sections(app)["Keys"]
        clock = app.replay.clock
        # moving the selection: every key of each direction
        for up, down in zip(keys["select the cell above"], keys["select the cell below"]):
            await pilot.press(down)
            assert selected(app) == (1, 0)
            await pilot.press(up)
            assert selected(app) == (0, 0)
        for left, right in zip(keys["select the cell to the left"], keys["select the cell to the right"]):
            await pilot.press(right)
            assert selected(app) == (0, 1)
            await pilot.press(left)
            assert selected(app) == (0, 0)
        # replay: pause, speed, jumps, seek
        (toggle,) = keys["a timed replay: play or pause"]
        assert clock.playing
        await pilot.press(toggle)
        assert not clock.playing
        for key in keys["a timed replay: faster"]:
            before = clock.speed
            await pilot.press(key)
            assert clock.speed > before
        for key in keys["a timed replay: slower"]:
            before = clock.speed
            await pilot.press(key)
            assert clock.speed < before
        (start,) = keys["a timed replay: to the start"]
        (end,) = keys["a timed replay: to the end"]
        await pilot.press(start)
        assert clock.fraction == 0.0
        for key in keys["a timed replay: jump forward"]:
            before = clock.fraction
            await pilot.press(key)
            assert clock.fraction == pytest.approx(before + 0.05, abs=1e-6)
        for key in keys["a timed replay: jump back"]:
            before = clock.fraction
            await pilot.press(key)
            assert clock.fraction == pytest.approx(before - 0.05, abs=1e-6)
        await pilot.press(end)
        assert clock.fraction == 1.0
        await until(pilot, lambda: "100/100" in app.screen.query(CellPanel).first().status.plain, "the end")
        # theme, compare, help, palette
        (theme,) = keys["light or dark theme"]
        before = app.theme
        await pilot.press(theme)
        assert app.theme != before
        await pilot.press(theme)
        assert app.theme == before
        (overview,) = keys["every cell in one row: sortable, grouped by factor"]
        await pilot.press(overview)
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "the overview")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, OverviewScreen), "the overview to close")
        (compare,) = keys["compare one metric across all cells"]
        await pilot.press(compare)
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), "compare")
        await pilot.press("escape")
        (helpkey,) = keys["this help"]
        await pilot.press(helpkey)
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        for close in sections(app)["Here"]["close this help"]:
            await pilot.press(close)
            await until(pilot, lambda: not isinstance(app.screen, HelpScreen), f"{close} to close the help")
            await pilot.press(helpkey)
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help again")
        await pilot.press("escape")
        (palette,) = keys["command palette: every action, the theme, screenshots"]
        await pilot.press(palette)
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the command palette")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CommandPalette), "the palette to close")
        (open_key,) = keys["charts of the selected cell (escape to come back)"]
        await pilot.press(open_key)
        await until(pilot, lambda: isinstance(app.screen, CellScreen), "the cell screen")
        assert app.screen.cell.id == "dpo-r16"
        await pilot.press("escape")
        (quit_key,) = keys["quit the monitor — the jobs keep running"]
        await pilot.press(quit_key)
        await until(pilot, lambda: not app.is_running, "the monitor to quit")
    assert app.return_value == 0


async def stop_and_restart_keys(tmp_path):
    """s, X and r in live mode: each asks, and 'n' leaves the cell as it was."""
    with live_process() as pid:
        path = grid(tmp_path, **{"dpo-r16": {"state": "failed"}, "dpo-r8": {"state": "running", "pid": pid}})
        app = MonitorApp(open_path(path), mode="live")
        async with app.run_test(size=(160, 48)) as pilot:
            await loaded(pilot)
            keys = sections(app)["Keys"]
            (restart,) = keys["restart a failed, stopped or lost cell from its checkpoint (asks)"]
            await pilot.press(restart)  # dpo-r16 failed: restartable
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the restart question")
            assert "Restart cell dpo-r16" in str(app.screen.query_one(".question").render())
            await pilot.press("n")
            (stop,) = keys["stop the selected cell (asks first; launched grids only)"]
            await pilot.press("right", stop)  # dpo-r8 runs
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the stop question")
            assert "dpo-r8" in str(app.screen.query_one(".question").render())
            await pilot.press("n")
            (stop_grid,) = keys["stop the whole grid (asks first)"]
            await pilot.press(stop_grid)
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the stop-grid question")
            assert "1 cell(s) have not ended" in str(app.screen.query_one(".question").render())
            await pilot.press("n")
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the question to close")
            assert app.view.cell("dpo-r8").state == "running"
        assert status(path, "dpo-r8").state == "running"  # nothing was stopped


def test_stop_and_restart_keys_ask_first(tmp_path):
    asyncio.run(stop_and_restart_keys(tmp_path))


@run
async def test_cell_screen_keys(tmp_path):
    app = MonitorApp(open_path(grid(tmp_path)), mode="replay", export_dir=tmp_path / "exports")
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CellScreen), "the cell screen")
        screen = app.screen
        keys = sections(app)["In a cell's charts (enter)"]
        names = screen.names
        start = screen.metric
        for key in keys["next metric"]:
            await pilot.press(key)
            assert screen.metric == names[(names.index(start) + 1) % len(names)]
        for key in keys["previous metric"]:
            await pilot.press(key)
            assert screen.metric == start
        (smooth,) = keys["EMA smoothing: off, 0.6, 0.9, 0.99 (the raw curve stays, dimmed)"]
        seen = []
        for _ in range(4):
            await pilot.press(smooth)
            seen.append(screen.smoothing)
        assert seen == [0.6, 0.9, 0.99, 0.0]
        for key, attribute in (
            (keys["log scale"], "log_scale"),
            (keys["y scale from the 1st to the 99th percentile"], "robust"),
            (keys["x axis: step or wall time"], "time_axis"),
        ):
            (press,) = key
            await pilot.press(press)
            assert getattr(screen, attribute) is True
            await pilot.press(press)
            assert getattr(screen, attribute) is False
        width = screen.query_one("#main").size.width
        (left,) = keys["cursor one column left: exact values"]
        (right,) = keys["cursor one column right"]
        (left10,) = keys["cursor ten columns left"]
        (right10,) = keys["cursor ten columns right"]
        await pilot.press(left)  # the first press puts the cursor on the last column
        assert screen.cursor == width - 1
        await pilot.press(left, left)
        assert screen.cursor == width - 3
        await pilot.press(right)
        assert screen.cursor == width - 2
        await pilot.press(left10)
        assert screen.cursor == width - 12
        await pilot.press(right10)
        assert screen.cursor == width - 2
        (export,) = keys["export the view's data as CSV and JSON"]
        await pilot.press(export)
        await until(pilot, lambda: len(list((tmp_path / "exports").glob("*.csv"))) == 1, "the CSV export")
        assert len(list((tmp_path / "exports").glob("*.json"))) == 1
        (svg,) = keys["the screen as SVG"]
        await pilot.press(svg)
        await until(pilot, lambda: len(list((tmp_path / "exports").glob("*.svg"))) == 1, "the SVG screenshot")
        (filter_key,) = keys["filter the metrics by a regular expression"]
        await pilot.press(filter_key)
        await until(pilot, lambda: screen.query_one("#filter").has_class("-shown"), "the filter field")
        await pilot.press(*"^loss$", "enter")
        await until(pilot, lambda: screen.pattern == "^loss$", "the filter")
        assert screen.names == ["loss"] and screen.metric == "loss"
        for back in keys["back to the grid"]:
            await pilot.press(back)
            await until(pilot, lambda: not isinstance(app.screen, CellScreen), f"{back} to leave the cell screen")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, CellScreen), "the cell screen again")


@run
async def test_compare_keys(tmp_path):
    app = MonitorApp(open_path(grid(tmp_path)), mode="replay")
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), "compare")
        screen = app.screen
        keys = sections(app)["In compare (c)"]
        start = screen.metric
        for key in keys["next metric"]:
            await pilot.press(key)
            assert screen.metric != start
        for key in keys["previous metric"]:
            await pilot.press(key)
            assert screen.metric == start
        (split,) = keys["train or held-out curves"]
        await pilot.press(split)
        assert screen.split == "eval"
        await pilot.press(split)
        assert screen.split == "train"
        (seeds,) = keys["several seeds: one band per setting, or each seed"]
        await pilot.press(seeds)
        assert screen.bands is False
        await pilot.press(seeds)
        assert screen.bands is True
        for back in keys["back to the grid"]:
            await pilot.press(back)
            await until(pilot, lambda: not isinstance(app.screen, CompareScreen), f"{back} to leave compare")
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, CompareScreen), "compare again")
