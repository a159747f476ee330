"""Replay as a time-lapse, by the logs' own timestamps: the clock, the cut grid, the controls."""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

from test_tui import app_for, make_grid, panels, run, screen_text, wait_for  # noqa: E402

from prefwatch.core.clock import FakeClock  # noqa: E402
from prefwatch.ingest.discover import open_path  # noqa: E402
from prefwatch.ingest.replay import ReplayClock, ReplayGrid  # noqa: E402


def test_the_clock_plays_pauses_speeds_up_and_jumps():
    fake = FakeClock(monotonic=0.0)
    clock = ReplayClock(100.0, 200.0, 2.0, fake)
    fake.advance(10)
    assert clock.now() == 120 and clock.time() == 120  # a clock itself: its time is the replay's
    clock.toggle()  # pause
    fake.advance(40)
    assert clock.now() == 120
    clock.faster(1)
    assert clock.speed == 5
    clock.toggle()
    fake.advance(2)
    assert clock.now() == 130
    clock.jump(-0.5)
    assert clock.now() == 100
    clock.seek(1)
    assert clock.finished and not clock.playing


def test_the_grid_is_cut_at_the_clock(tmp_path):
    grid = make_grid(tmp_path, steps=30)  # rows logged one a second, the last at "now"
    fake = FakeClock(monotonic=0.0)
    replay = ReplayGrid(open_path(grid), 1.0, fake)
    start, end = replay.clock.start, replay.clock.end
    assert end - start == pytest.approx(29, abs=1)
    cells = {c.id: c for c in replay.source.cells}
    assert cells["dpo-r16"].series.last_step == 1 and cells["dpo-r16"].status().state == "running"
    fake.advance(9.5)
    assert replay.update()
    cell = next(c for c in replay.source.cells if c.id == "dpo-r16")
    assert cell.series.last_step == 10 and len(cell.pairs.steps) == 1  # the evaluation at step 10
    assert not replay.update()  # the clock did not move
    replay.clock.seek(1)
    replay.update()
    cell = next(c for c in replay.source.cells if c.id == "dpo-r16")
    assert cell.series.last_step == 30 and cell.series.finished and cell.status().state == "finished"


@run
async def test_a_timed_replay_plays_and_obeys_its_keys(tmp_path):
    app = app_for(make_grid(tmp_path), speed=1.0)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4 and app.replay is not None)
        await wait_for(pilot, lambda: "replay ▶ 1×" in screen_text(app))
        assert "running" in screen_text(app)
        await pilot.press("space")
        await wait_for(pilot, lambda: "replay ⏸" in screen_text(app))
        await pilot.press("plus", "plus")
        assert app.replay.clock.speed == 5 and app.replay_speed == 5  # the speed is a setting of the app
        app.replay_speed = 60  # set as a setting: the clock follows, the strip says so
        await wait_for(pilot, lambda: "replay ⏸ 60×" in screen_text(app))
        assert app.replay.clock.speed == 60
        await pilot.press("end")
        await wait_for(pilot, lambda: screen_text(app).count("finished  step 30/40") == 4)
        assert "Stop cell" not in screen_text(app)  # nothing to stop in a replay
