"""The monitor, headless: every cell on screen, live updates, literal text, 80×24, stop, chart screen."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.geometry import Region  # noqa: E402

from prefwatch.files import rundir
from prefwatch.ingest.discover import open_path  # noqa: E402
from prefwatch.run import jobs  # noqa: E402
from prefwatch.tui.app import MonitorApp  # noqa: E402
from prefwatch.tui.screens.cell import CellScreen  # noqa: E402
from prefwatch.tui.screens.confirm import ConfirmScreen  # noqa: E402
from prefwatch.tui.screens.help import HelpScreen  # noqa: E402
from prefwatch.tui.widgets.cell_panel import CellPanel, MetricRow, row_spans  # noqa: E402

CELLS = [("dpo", 16), ("dpo", 8), ("simpo", 16), ("simpo", 8)]
MAX_STEPS = 40


# ---- a 2×2 grid written the way the trainer and launcher write it --------------------------------


def train_record(step: int, objective: str, rank: int, at: float | None = None, **override: float) -> dict:
    """A TRL train log line; logged ``at`` a time (default now), so that a running cell never reads as stalled."""
    scale = 1.0 if objective == "dpo" else 2.0
    # SimPO's rewards are β (2.0) × the mean log-probability, below 0 from the first step; DPO's start near 0.
    base = 0.0 if objective == "dpo" else -10.0
    chosen = base + scale * 0.02 * step * (16 / rank) ** 0.2
    rejected = base - scale * 0.015 * step
    logps = {} if objective == "dpo" else {"logps/chosen": chosen / scale, "logps/rejected": rejected / scale}
    record = {
        "loss": max(0.05, math.log(2) - 0.01 * step),
        "grad_norm": 1.0,
        "learning_rate": 5e-6,
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": min(1.0, 0.5 + 0.01 * step),
        "logps/chosen": -50.0,
        "logps/rejected": -60.0,
        **logps,
        "epoch": step / MAX_STEPS,
        "step": step,
        "time": time.time() if at is None else at,
    }
    record.update(override)
    return record


def eval_record(step: int, objective: str, at: float | None = None) -> dict:
    scale = 1.0 if objective == "dpo" else 2.0
    return {
        "eval_loss": 0.6,
        "eval_rewards/chosen": scale * 0.01 * step,
        "eval_rewards/rejected": -scale * 0.005 * step,
        "eval_rewards/margins": scale * 0.015 * step,
        "eval_rewards/accuracies": 0.5 + step / 200,
        "epoch": step / MAX_STEPS,
        "step": step,
        "time": time.time() if at is None else at,
    }


def pairs_record(step: int, wins: int, pairs: int = 20) -> dict:
    chosen = [1.0 if i < wins else -1.0 for i in range(pairs)]
    return {"step": step, "pair_ids": [f"p{i}" for i in range(pairs)], "chosen": chosen, "rejected": [0.0] * pairs}


def write_lines(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def make_grid(root: Path, steps: int = 30, state: str = jobs.FINISHED, cells=CELLS) -> Path:
    grid = root / "demo-grid"
    for index, (objective, rank) in enumerate(cells):
        cell_id = f"{objective}-r{rank}"
        cell_dir = grid / rundir.CELLS_DIR / cell_id
        cell_dir.mkdir(parents=True)
        settings = {
            "id": cell_id,
            "index": index,
            "objective": objective,
            "rank": rank,
            "seed": None,
            "train": {"max_steps": MAX_STEPS, "eval_every": 10},
        }
        rundir.write_json_atomic(cell_dir / rundir.CELL_FILE, settings)
        status = {"state": state, "host": None}
        if state == jobs.RUNNING:  # a live job: this test process stands in for it
            status.update(pid=os.getpid(), pid_start=jobs.process_start_time(os.getpid()), pgid=None)
        if state == jobs.FINISHED:
            status.update(exit_code=0)
        rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, status)
        now = time.time()
        records = [train_record(s, objective, rank, at=now - steps + s) for s in range(1, steps + 1)]
        records += [eval_record(s, objective, at=now - steps + s) for s in range(10, steps + 1, 10)]
        records.sort(key=lambda r: r["step"])
        if state == jobs.FINISHED:
            records.append({"train_runtime": 10.0, "train_loss": 0.3, "step": steps})
        write_lines(cell_dir / rundir.METRICS_FILE, records)
        write_lines(cell_dir / rundir.EVAL_PAIRS_FILE, [pairs_record(s, 10 + index) for s in range(10, steps + 1, 10)])
        (cell_dir / rundir.STDOUT_FILE).write_text("step 1\nstep 2\rstep 3\n")
    return grid


def run(coroutine_function):
    """Run an async test with asyncio.run: no pytest plugin needed (Textual's own pilot drives the app)."""

    @functools.wraps(coroutine_function)
    def test(*args, **kwargs):
        asyncio.run(coroutine_function(*args, **kwargs))

    return test


def app_for(path: Path, mode: str = "replay", **kwargs) -> MonitorApp:
    return MonitorApp(open_path(path), mode=mode, **kwargs)


async def wait_for(pilot, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


def panels(app: MonitorApp) -> dict[str, CellPanel]:
    return {p.cell_id: p for p in app.screen_stack[0].query(CellPanel)}


def screen_text(app: MonitorApp) -> str:
    """What the terminal shows now, as plain text, one line per row (what a user would read)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


# ---- tests ----------------------------------------------------------------------------------------------


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@run
async def test_shows_every_cell_of_the_grid(tmp_path):
    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        await pilot.pause()
        shown = panels(app)
        assert set(shown) == {"dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"}
        # objectives are rows, ranks are columns, in the grid's order
        assert shown["dpo-r16"].position == (0, 0)
        assert shown["dpo-r8"].position == (0, 1)
        assert shown["simpo-r16"].position == (1, 0)
        assert shown["simpo-r8"].position == (1, 1)
        text = screen_text(app)
        assert text.count("finished  step 30/40") == 4
        for label in ("chosen", "rejected", "margin", "ho margin", "ho acc"):
            assert label in text
        assert app.view.headline in text


@run
async def test_fits_80x24_with_summary_and_footer(tmp_path):
    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        await pilot.pause()
        text = screen_text(app)
        lines = text.splitlines()
        assert len(lines) == 24
        for cell_id in ("dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"):
            assert cell_id in text
            assert panels(app)[cell_id].region.bottom <= 24 - 4  # above the summary strip and the footer
        assert "verdict" in text
        assert "Quit" in lines[-1]
        for panel in panels(app).values():  # every curve row has room for a chart, and the reason below them
            spans = row_spans(panel.content_size.height)
            assert all(height >= 1 for _, height in spans)
            assert sum(height for _, height in spans) + 2 <= panel.content_size.height


@run
async def test_live_appends_update_the_panel(tmp_path):
    grid = make_grid(tmp_path, steps=20, state=jobs.RUNNING)
    app = app_for(grid, mode="live")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.feed.follower is not None)
        panel = panels(app)["dpo-r16"]
        assert panel.view.step == 20 and panel.view.state == "running"
        write_lines(
            grid / "cells" / "dpo-r16" / rundir.METRICS_FILE,
            [train_record(21, "dpo", 16), train_record(22, "dpo", 16, **{"rewards/margins": 7.25})],
        )
        await wait_for(pilot, lambda: panel.view.step == 22)
        await pilot.pause()
        assert panel.row("margin").value_text == "+7.250"
        assert "step 22/40" in screen_text(app)
        assert panels(app)["dpo-r8"].view.step == 20  # the others did not move


@run
async def test_live_in_forced_polling_mode(tmp_path):
    grid = make_grid(tmp_path, steps=5, state=jobs.RUNNING)
    app = app_for(grid, mode="live", poll=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.feed.follower is not None and len(panels(app)) == 4)
        assert app.feed.follower.mode == "polling"
        write_lines(grid / "cells" / "simpo-r8" / rundir.METRICS_FILE, [train_record(6, "simpo", 8)])
        await wait_for(pilot, lambda: panels(app)["simpo-r8"].view.step == 6)
        assert "live (polling)" in screen_text(app)


@run
async def test_log_text_is_shown_literally(tmp_path):
    hostile = "[bold red]x\x1b[31m"
    grid = make_grid(tmp_path, cells=[("dpo", 16)])
    cell_dir = grid / "cells" / "dpo-r16"
    strange = cell_dir.rename(cell_dir.with_name(f"dpo-r16-{hostile}"))
    (strange / rundir.STDOUT_FILE).write_text("loss [bold red]x[/] \x1b[31mred\x1b[0m \u202eevil\n")
    app = app_for(grid)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 1)
        await pilot.pause()
        text = screen_text(app)
        assert "dpo-r16-[bold red]x\\x1b[31m" in text  # the markup as written, ESC as a visible escape
        assert "\x1b" not in text
        await wait_for(pilot, lambda: isinstance(app.focused, CellPanel))  # enter is the panel's key
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CellScreen))
        await pilot.pause()
        text = screen_text(app)
        assert "loss [bold red]x[/] red \\u202eevil" in text
        assert "\x1b" not in text and "\u202e" not in text


@run
async def test_enter_opens_the_cell_chart_and_escape_returns(tmp_path):
    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        await wait_for(pilot, lambda: isinstance(app.focused, CellPanel))  # the arrows move the panels' focus
        await pilot.press("right", "down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CellScreen))
        assert app.screen.cell.id == "simpo-r8"
        text = screen_text(app)
        assert "train" in text and "held-out" in text and "held-out accuracy" in text
        # The job's output (read by a worker, off the UI thread), carriage returns resolved.
        await wait_for(pilot, lambda: "step 3" in screen_text(app))
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, CellScreen))


@run
async def test_stop_asks_then_stops_the_selected_cell(tmp_path):
    grid = make_grid(tmp_path, steps=0, state=jobs.QUEUED)
    app = app_for(grid, mode="live")
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.feed.follower is not None)
        await pilot.pause()
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert not (grid / "cells" / "dpo-r16" / jobs.STOP_REQUEST).exists()
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: panels(app)["dpo-r16"].view.state == jobs.STOPPED)
        assert panels(app)["dpo-r8"].view.state == jobs.QUEUED


@run
async def test_stop_is_refused_for_logs_prefwatch_did_not_launch(tmp_path):
    run_dir = tmp_path / "dpo-r16"
    run_dir.mkdir()
    write_lines(run_dir / rundir.METRICS_FILE, [train_record(s, "dpo", 16) for s in range(1, 5)])
    app = app_for(run_dir, mode="live")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 1)
        await pilot.pause()
        await pilot.press("s")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)


@run
async def test_quit_returns_0_and_writes_nothing(tmp_path):
    grid = make_grid(tmp_path, state=jobs.RUNNING)
    before = tree_state(grid)
    app = app_for(grid, mode="live")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.feed.follower is not None)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await pilot.press("q")
        await pilot.pause()
    assert app.return_value == 0
    assert tree_state(grid) == before
    assert app.feed.follower._thread is None  # the follower stopped with the app


@run
async def test_a_diverged_cell_shows_nan_and_its_finding(tmp_path):
    grid = make_grid(tmp_path, cells=[("dpo", 16), ("simpo", 16)])
    write_lines(
        grid / "cells" / "dpo-r16" / rundir.METRICS_FILE,
        [train_record(31, "dpo", 16, **{"rewards/margins": float("nan"), "loss": float("nan")})],
    )
    app = app_for(grid)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 2)
        await pilot.pause()
        panel = panels(app)["dpo-r16"]
        assert panel.has_class("-error") and not panels(app)["simpo-r16"].has_class("-error")
        assert panel.row("margin").value_text == "nan"
        assert "NaN or infinite" in panel.reason.plain


@run
async def test_svg_snapshot_at_80x24(tmp_path):
    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        await pilot.pause()
        path = Path(app.save_screenshot("grid-80x24.svg", path=str(tmp_path)))
    svg = path.read_text()
    assert svg.startswith("<svg")
    for cell_id in ("dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"):
        assert cell_id.replace("-", "&#160;") in svg or cell_id in svg


@run
async def test_the_selected_panel_is_highlighted_whole(tmp_path):
    """The focus background reaches the drawn rows too (they cache their strips)."""
    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        await pilot.pause()

        def background(panel: CellPanel, line: int) -> object:
            region = panel.content_region
            return app.screen._compositor.get_style_at(region.x + 1, region.y + line).bgcolor

        def row_of(panel: CellPanel) -> int:  # the margin row's first line (its label and value)
            keys = [row.key for row in panel.rows]
            return row_spans(panel.content_size.height)[keys.index("margin")][0]

        first, second = panels(app)["dpo-r16"], panels(app)["dpo-r8"]
        assert background(first, row_of(first)) == background(first, 0) != background(second, row_of(second))
        await pilot.press("right")
        await pilot.pause()
        assert app.screen.focused is second
        assert background(second, row_of(second)) == background(second, 0) != background(first, row_of(first))


def test_run_monitor_lets_a_bad_path_through(tmp_path):
    from prefwatch.ingest.sources import SourceError
    from prefwatch.tui.app import run_monitor

    with pytest.raises(SourceError):
        run_monitor(tmp_path / "missing")
    with pytest.raises(ValueError):
        MonitorApp(open_path(make_grid(tmp_path)), mode="fast")


@run
async def test_an_analysis_failure_is_reported_not_fatal(tmp_path, monkeypatch):
    import prefwatch.analysis.incremental as incremental_module

    def broken(grid, **kwargs):
        raise RuntimeError("[bold]boom[/]")

    monkeypatch.setattr(incremental_module, "analyse", broken)
    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: "could not read the logs" in screen_text(app))
        assert "RuntimeError: [bold]boom[/]" in screen_text(app)
        assert app.is_running


@run
async def test_a_new_value_that_moves_no_dot_repaints_only_its_text(tmp_path):
    grid = make_grid(tmp_path, steps=20, state=jobs.RUNNING)
    app = app_for(grid, mode="live")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.feed.follower is not None)
        await pilot.pause()
        row = panels(app)["dpo-r16"].row("rejected")
        await wait_for(pilot, lambda: row._strips is not None)
        repaints = row.repaints
        # Same value range, same pixel: a repeat of the last value one step on moves no dot at this width.
        last = train_record(20, "dpo", 16)
        write_lines(grid / "cells" / "dpo-r16" / rundir.METRICS_FILE, [dict(last, step=20.01)])
        await wait_for(pilot, lambda: panels(app)["dpo-r16"].view.records == 23)
        await pilot.pause()
        assert row.repaints == repaints
        write_lines(
            grid / "cells" / "dpo-r16" / rundir.METRICS_FILE,
            [train_record(21, "dpo", 16, **{"rewards/rejected": -5.0})],
        )
        await wait_for(pilot, lambda: "-5.000" in screen_text(app))
        assert row.repaints > repaints  # a new low rescales the chart: the whole row is drawn


def cells_of(panel: CellPanel) -> list[list[tuple[str, object]]]:
    """Each content line of a panel as it draws it now: (character, style) per cell."""
    return [
        [(char, segment.style) for segment in panel.render_line(y) for char in segment.text]
        for y in range(panel.content_size.height)
    ]


@run
async def test_a_panel_repaints_every_cell_that_changed_and_draws_what_a_fresh_panel_draws(tmp_path):
    """A panel repaints only what changed (a region per line, or its value's cells): every cell that
    differs from what it drew before lies in a region it refreshed, and what it draws is what a
    panel drawn from scratch draws."""
    grid = make_grid(tmp_path, steps=20, state=jobs.RUNNING)
    app = app_for(grid, mode="live")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.feed.follower is not None)
        await pilot.pause()
        panel = panels(app)["dpo-r16"]
        refreshed: list[tuple[Region, ...]] = []
        refresh = panel.refresh

        def spy(*regions: Region, **kwargs):
            refreshed.append(regions)
            return refresh(*regions, **kwargs)

        panel.refresh = spy  # type: ignore[method-assign]
        log = grid / "cells" / "dpo-r16" / rundir.METRICS_FILE
        last = train_record(20, "dpo", 16)
        seen: set[str] = set()
        steps = [20.01, 21, 21.01, 22, 23, 23.02, 24, 25, 26]  # a fraction: the last values again, no dot moves
        for step in steps:
            before, records = cells_of(panel), panel.view.records
            refreshed.clear()
            if step == int(step):
                last = train_record(int(step), "dpo", 16, **{"rewards/margins": 0.5 * step % 3})
            else:  # the value's last digit changes, no dot moves
                last = dict(last, **{"rewards/margins": last["rewards/margins"] + 0.002})
            write_lines(log, [dict(last, step=step)])
            await wait_for(pilot, lambda records=records: panel.view.records > records)
            await pilot.pause()
            after = cells_of(panel)
            changed = {
                (x, y)
                for y, (a, b) in enumerate(zip(before, after))
                for x in range(len(b))
                if a[x : x + 1] != b[x : x + 1]
            }
            if not any(regions == () for regions in refreshed):  # a refresh without regions repaints all
                covered = {
                    (x, y)
                    for regions in refreshed
                    for r in regions
                    for y in range(r.y, r.bottom)
                    for x in range(r.x, r.right)
                }
                assert changed <= covered, (
                    f"step {step}: cells changed but not repainted: {sorted(changed - covered)[:5]}"
                )
            panel.notify_style_update()  # drops every drawn line: the panel draws from scratch
            assert cells_of(panel) == after, f"step {step}"
            seen.update(
                "value" if r.width == MetricRow.GUTTER_WIDTH else "line" for regions in refreshed for r in regions
            )
        assert seen == {"value", "line"}  # both kinds of partial repaint were made


@run
async def test_start_up_objects_are_frozen_while_the_app_runs_and_unfrozen_after(tmp_path):
    """A full garbage collection must not walk everything start-up made (a 65 ms frame): the app
    freezes it once it has drawn, and hands it back to the collector when it closes."""
    import gc

    grid = make_grid(tmp_path, steps=20, state=jobs.RUNNING)
    app = app_for(grid, mode="live")
    assert gc.get_freeze_count() == 0
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.feed.follower is not None)
        write_lines(grid / "cells" / "dpo-r16" / rundir.METRICS_FILE, [train_record(21, "dpo", 16)])
        await wait_for(pilot, lambda: gc.get_freeze_count() > 0)  # after the second view drawn
        assert app.is_running
    assert gc.get_freeze_count() == 0


@run
async def test_only_changed_cells_are_analysed_again(tmp_path):
    grid = make_grid(tmp_path, steps=20, state=jobs.RUNNING)
    app = app_for(grid, mode="live", heartbeat=600)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.feed.follower is not None)
        incremental = app.feed.incremental
        before = incremental.analysed
        write_lines(grid / "cells" / "simpo-r8" / rundir.METRICS_FILE, [train_record(21, "simpo", 8)])
        await wait_for(pilot, lambda: panels(app)["simpo-r8"].view.step == 21)
        # Its findings follow within the findings age (a second for four cells); no other cell is analysed.
        await wait_for(pilot, lambda: incremental.analysed - before >= 1)
        await pilot.pause(0.3)
        assert incremental.analysed - before == 1
        assert app.view.headline  # the verdict is still decided over every cell


@run
async def test_a_failed_cell_rings_and_notifies_and_the_grid_can_be_stopped(tmp_path):
    grid = make_grid(tmp_path, steps=5, state=jobs.QUEUED)
    app = app_for(grid, mode="live")
    bells = []
    app.bell = lambda: bells.append(1)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.feed.follower is not None and len(panels(app)) == 4)
        cell_dir = grid / "cells" / "dpo-r8"
        rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, {"state": jobs.FAILED, "exit_code": 1, "host": None})
        await wait_for(pilot, lambda: bells and any("dpo-r8: failed" in n.message for n in app._notifications))
        await pilot.press("X")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: all(p.view.state in jobs.ENDED_STATES for p in panels(app).values()))
        assert panels(app)["dpo-r16"].view.state == jobs.STOPPED
        assert panels(app)["dpo-r8"].view.state == jobs.FAILED  # an ended cell is left as it was
        await pilot.press("T")
        assert app.theme == "textual-light"


async def grid_svg(root: Path, size: tuple[int, int]) -> str:
    """The grid's picture once it has settled: every panel drawn, the first one focused (focus comes after
    mounting), and two pictures taken a moment apart the same (on a loaded machine the reading thread's
    last view can land after the first frame)."""
    app = app_for(make_grid(root))
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4 and app.screen.focused is not None)
        pictures = [""]
        deadline = time.monotonic() + 60
        while True:
            await pilot.pause(0.2)
            pictures.append(app.export_screenshot())
            if pictures[-1] == pictures[-2]:
                return pictures[-1]
            assert time.monotonic() < deadline, "the grid's picture did not settle within 60 s"


@run
async def test_svg_snapshot_at_160x48_is_stable(tmp_path):
    svg = await grid_svg(tmp_path / "a", (160, 48))
    assert svg.startswith("<svg") and "verdict" in svg
    for label in ("ho&#160;margin", "step&#160;30/40", "finished"):
        assert svg.count(label) >= 4
    # The same grid draws the same picture: a snapshot can be compared byte for byte.
    again = await grid_svg(tmp_path / "b", (160, 48))
    assert again.replace(str(tmp_path / "b"), "") == svg.replace(str(tmp_path / "a"), "")
    # The export names the run directory, not a file: nothing of the folder leaks into the comparison.
    assert "demo-grid" in svg


@run
async def test_restart_asks_then_restarts_only_the_selected_failed_cell(tmp_path, monkeypatch):
    grid = make_grid(tmp_path, steps=5, cells=[("dpo", 16), ("dpo", 8)])
    rundir.write_json_atomic(
        grid / "cells" / "dpo-r16" / rundir.STATUS_FILE, {"state": jobs.FAILED, "exit_code": 1, "host": None}
    )
    calls = []
    monkeypatch.setattr(jobs, "restart_cells", lambda root, ids: calls.append((root, ids)) or ids)
    app = app_for(grid, mode="live")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 2)
        await pilot.pause()
        await pilot.press("right", "r")  # dpo-r8 finished: nothing to restart
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("left", "r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: len(calls) == 1)
        assert calls == [(grid, ["dpo-r16"])]


@run
async def test_the_command_palette_offers_the_monitors_actions(tmp_path):
    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Compare cells" in titles and "Toggle light/dark theme" in titles
        assert "Stop the whole grid" not in titles  # a replay has nothing to stop
        command = next(c for c in app.get_system_commands(app.screen) if c.title == "Compare cells")
        command.callback()
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen")


@run
async def test_a_view_posted_while_the_app_closes_is_dropped(tmp_path):
    from prefwatch.tui.updates import GridUpdated
    from prefwatch.view.feed import Update

    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.view is not None)
    drawn = app.refreshes
    app.on_grid_updated(GridUpdated(Update(app.view, "replay")))  # no screens left: nothing to draw, nothing raised
    assert app.refreshes == drawn


@run
async def test_a_newer_view_replaces_a_stale_one_still_queued_but_news_is_drawn(tmp_path):
    """The feed's updates wait in the app's queue: the newest view is drawn, the ones it superseded are
    not, unless one carries news (each event is told once, after the frame that shows it)."""
    from dataclasses import replace

    from prefwatch.tui.updates import GridUpdated
    from prefwatch.view.feed import News, Update

    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        base, drawn = app.view, app.refreshes
        views = [replace(base, headline=f"view {i}") for i in range(3)]
        for view in views:  # queued together: the app reads none of them before the last is posted
            app.post_message(GridUpdated(Update(view, "replay")))
        await wait_for(pilot, lambda: app.view is views[-1])
        await pilot.pause()
        assert app.refreshes == drawn + 1  # the two stale views were dropped
        assert "view 2" in screen_text(app)

        told = News("dpo-r8: failed (exit 1)", "error")
        app.post_message(GridUpdated(Update(views[0], "replay", news=told)))
        app.post_message(GridUpdated(Update(views[1], "replay")))
        app.post_message(GridUpdated(Update(None, "replay", "words only")))  # keeps the view before it
        await wait_for(pilot, lambda: any(n.message == told.text for n in app._notifications))
        await pilot.pause()
        assert app.refreshes == drawn + 3 and app.view is views[1]
        assert next(n for n in app._notifications if n.message == told.text).severity == "error"


def test_theme_lookup_answers_as_textuals_own(tmp_path):
    """The app answers theme lookups from the themes as registered, without Textual's copies, and
    with no private attribute of Textual read: the same answers as Textual's own lookup."""
    from textual.app import App
    from textual.theme import Theme

    app = app_for(make_grid(tmp_path))
    names = list(app.available_themes)
    assert "textual-dark" in names and "textual-light" in names
    for name in [*names, "nope, textual-light", " textual-dark ", "nope"]:
        assert app.get_theme(name) is App.get_theme(app, name), name
    app.register_theme(Theme(name="prefwatch-test", primary="#004578"))
    assert app.get_theme("prefwatch-test") is App.get_theme(app, "prefwatch-test") is not None
    app.unregister_theme("prefwatch-test")
    assert app.get_theme("prefwatch-test") is None is App.get_theme(app, "prefwatch-test")
    source = "\n".join(p.read_text() for p in (Path(__file__).parent.parent / "prefwatch").rglob("*.py"))
    assert "_registered_themes" not in source


@run
async def test_the_cell_screens_settings_redraw_it_when_set(tmp_path):
    """The chart's settings are reactive: set from anywhere (not only by their keys), the chart follows."""
    app = app_for(make_grid(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        await wait_for(pilot, lambda: isinstance(app.focused, CellPanel))  # enter is the panel's key
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CellScreen))
        screen = app.screen
        await wait_for(pilot, lambda: "smoothing off" in screen_text(app))
        screen.smoothing = 0.9
        screen.time_axis = True
        await wait_for(pilot, lambda: "smoothing 0.9" in screen_text(app) and "x: wall time" in screen_text(app))
