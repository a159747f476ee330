"""The overview of a large sweep, driven headless with Textual's Pilot at 120×36: keys and their effects."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.widgets import DataTable  # noqa: E402

from prefwatch.ingest.discover import open_path  # noqa: E402
from prefwatch.tui.app import MonitorApp  # noqa: E402
from prefwatch.tui.screens.cell import CellScreen  # noqa: E402
from prefwatch.tui.screens.compare import CompareScreen  # noqa: E402
from prefwatch.tui.screens.grid import GridScreen  # noqa: E402
from prefwatch.tui.screens.overview import OverviewScreen  # noqa: E402
from prefwatch.tui.updates import GridUpdated  # noqa: E402
from prefwatch.view.feed import Update  # noqa: E402

SIZE = (120, 36)


def run(coroutine_function):
    @functools.wraps(coroutine_function)
    def test(*args, **kwargs):
        asyncio.run(coroutine_function(*args, **kwargs))

    return test


def sweep(root: Path, objectives=("dpo", "simpo"), ranks=(4, 8, 16, 32), seeds=(0, 1, 2)) -> dict[str, tuple]:
    """A folder of finished runs named objective-rN-seedS; each cell's held-out accuracy and margin differ."""
    truth = {}
    now = time.time() - 100
    for i, (objective, rank, seed) in enumerate((o, r, s) for o in objectives for r in ranks for s in seeds):
        name = f"{objective}-r{rank}-seed{seed}"
        accuracy = round(0.4 + 0.5 * ((i * 7) % 24) / 24, 4)
        train_margin, heldout_margin = 1.0 + 0.1 * i, 0.5 + 0.01 * i
        lines = [
            {"loss": 0.5, "rewards/margins": train_margin, "step": s, "time": now + s}
            for s in range(1, 21)  # constant margins: no over-optimisation finding to vary the test
        ]
        lines.append(
            {"eval_rewards/accuracies": accuracy, "eval_rewards/margins": heldout_margin, "step": 20, "time": now + 20}
        )
        lines.append({"train_runtime": 20.0, "step": 20})
        (root / name).mkdir()
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        truth[name] = (objective, rank, seed, accuracy, train_margin - heldout_margin)
    return truth


async def wait_for_condition(pilot, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.05)


async def overview_of(app: MonitorApp, pilot) -> OverviewScreen:
    deadline = time.monotonic() + 20
    while not (
        isinstance(app.screen, OverviewScreen)
        and app.screen.query(DataTable)
        and app.screen.table.row_count == len(app.screen.grid_view.cells)
        and app.view is not None
        and app.screen.grid_view is app.view  # the full read's view, not the first frame's preview
    ):
        assert time.monotonic() < deadline, "the overview did not open"
        await pilot.pause(0.05)
    await pilot.pause()
    return app.screen


def rows(screen: OverviewScreen) -> list[str]:
    """Cell ids in the order the table shows them."""
    table = screen.table
    return [table.get_row_at(i)[1].plain for i in range(table.row_count)]


@run
async def test_a_large_sweep_opens_on_the_overview_with_every_cell_grouped_and_ordered_as_numbers(tmp_path):
    truth = sweep(tmp_path)
    app = MonitorApp(open_path(tmp_path), mode="replay")
    async with app.run_test(size=SIZE) as pilot:
        screen = await overview_of(app, pilot)
        shown = rows(screen)
        assert sorted(shown) == sorted(truth)  # every cell, once
        assert screen.group == "objective"
        # Grouped by objective, then by name with numbers as numbers: r4 before r8 before r16.
        assert shown[:4] == ["dpo-r4-seed0", "dpo-r4-seed1", "dpo-r4-seed2", "dpo-r8-seed0"]
        assert shown.index("dpo-r16-seed0") < shown.index("dpo-r32-seed0") < shown.index("simpo-r4-seed0")
        assert "24 cells" in str(screen.query_one("#overview-title").render())


@run
async def test_sort_keys_reorder_the_rows_and_keep_the_selection(tmp_path):
    truth = sweep(tmp_path)
    app = MonitorApp(open_path(tmp_path), mode="replay")
    async with app.run_test(size=SIZE) as pilot:
        screen = await overview_of(app, pilot)
        await pilot.press("down", "down")
        selected = screen.selected_id()
        await pilot.press("a")
        await pilot.pause()
        by_accuracy = rows(screen)
        for group in ("dpo", "simpo"):  # within each objective, best held-out accuracy first
            accuracies = [truth[c][3] for c in by_accuracy if truth[c][0] == group]
            assert accuracies == sorted(accuracies, reverse=True)
        assert screen.selected_id() == selected  # the cursor follows its row
        await pilot.press("g")
        await pilot.pause()
        gaps = [truth[c][4] for c in rows(screen) if truth[c][0] == "dpo"]
        assert gaps == sorted(gaps, reverse=True)  # the largest margin gap (most suspicious) first
        await pilot.press("n")
        await pilot.pause()
        assert rows(screen)[:2] == ["dpo-r4-seed0", "dpo-r4-seed1"]


@run
async def test_f_cycles_the_grouping_through_the_factors_that_vary(tmp_path):
    truth = sweep(tmp_path)
    app = MonitorApp(open_path(tmp_path), mode="replay")
    async with app.run_test(size=SIZE) as pilot:
        screen = await overview_of(app, pilot)
        await pilot.press("f")
        await pilot.pause()
        assert screen.group == "rank"
        ranks = [truth[c][1] for c in rows(screen)]
        assert ranks == sorted(ranks)  # grouped by rank, as numbers
        assert screen.table.get_row_at(0)[0].plain == "r4"
        await pilot.press("f")
        await pilot.pause()
        assert screen.group == "seed"
        await pilot.press("f", "f")
        await pilot.pause()
        assert screen.group == "objective"  # seed, none, then round again


@run
async def test_enter_opens_the_cell_and_o_opens_its_group(tmp_path):
    truth = sweep(tmp_path)
    app = MonitorApp(open_path(tmp_path), mode="replay")
    async with app.run_test(size=SIZE) as pilot:
        screen = await overview_of(app, pilot)
        await pilot.press("down")
        selected = screen.selected_id()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, CellScreen) and app.screen.cell.id == selected
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("o")
        await pilot.pause()
        assert isinstance(app.screen, CompareScreen)
        group = {c.id for c in app.screen.grid.cells}
        assert group == {c for c, t in truth.items() if t[0] == truth[selected][0]}  # the selected row's objective
        newer = replace(app.view, headline="a newer view")  # as the feed delivers it: every cell
        app.post_message(GridUpdated(Update(newer, "replay")))
        await wait_for_condition(pilot, lambda: app.screen.grid.headline == "a newer view")
        assert {c.id for c in app.screen.grid.cells} == group  # the group's screen follows, cut to the group
        assert app.screen.grid.name.endswith(f"(objective {truth[selected][0]})")
        await pilot.press("escape", "escape")
        await pilot.pause()
        assert isinstance(app.screen, GridScreen)  # under the overview: the panels


@run
async def test_a_small_grid_opens_on_panels_and_o_shows_the_overview(tmp_path):
    sweep(tmp_path, objectives=("dpo",), ranks=(8, 16), seeds=(0,))
    app = MonitorApp(open_path(tmp_path), mode="replay")
    async with app.run_test(size=SIZE) as pilot:
        while app.view is None:
            await pilot.pause(0.05)
        await pilot.pause()
        assert isinstance(app.screen, GridScreen)
        await pilot.press("o")
        screen = await overview_of(app, pilot)
        assert rows(screen) == ["dpo-r8-seed0", "dpo-r16-seed0"]
        assert screen.group == "rank"
