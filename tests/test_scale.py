"""Work that must grow with what changed, not with the size of the grid or of the logs.

No test here times anything: each counts the work done (lines through the record-by-record path,
panels made, files opened) and checks the result equals the plain way's.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefwatch.core.clock import FakeClock
from prefwatch.ingest import columnar
from prefwatch.ingest.discover import open_path
from tests import test_incremental
from tests.test_ingest import assert_same_series, exact_lines_of, line, slow_series


def test_a_finished_log_goes_column_wise_but_for_its_end_record(tmp_path: Path) -> None:
    # Train lines with an evaluation every 10 steps, then the end-of-training record: the keys are
    # learned from the first lines' key sets, and only the end record goes the exact way.
    lines = []
    for step in range(1, 301):
        lines.append(line(step, loss=1 / step, **{"rewards/margins": step / 100}))
        if step % 10 == 0:
            lines.append(line(step, eval_loss=0.5, **{"eval_rewards/accuracies": 0.6}))
    lines.append(b'{"train_runtime": 10.0, "train_loss": 0.4, "step": 300}\n')
    (tmp_path / "dpo-r8").mkdir()
    (tmp_path / "dpo-r8" / "metrics.jsonl").write_bytes(b"".join(lines))
    grid = open_path(tmp_path / "dpo-r8")
    assert exact_lines_of(grid) == [1]
    series = grid.cells[0].series
    assert_same_series(series, slow_series(b"".join(lines).decode()))
    assert series.finished and len(series.train) == 300 and len(series.eval) == 30


def test_odd_lines_go_the_exact_way_one_line_each(tmp_path: Path) -> None:
    lines = [line(s, loss=s / 10, **{"rewards/margins": s / 100}) for s in range(1, 20001)]
    odd = {
        2_000: b'{"step": 2001, "time": 1.0, "loss": NaN}\n',  # a malformed token: named by its byte
        5_000: b'{"step": 5001, "time": 1.0, "loss": null}\n',  # a wrong type: named by its index
        9_000: line(9001, loss=0.5, grad_norm=1.0),  # a key not seen before
        12_000: b"not json at all\n",
    }
    for index, text in odd.items():
        lines[index] = text
    (tmp_path / "dpo-r8").mkdir()
    (tmp_path / "dpo-r8" / "metrics.jsonl").write_bytes(b"".join(lines))
    grid = open_path(tmp_path / "dpo-r8")
    assert exact_lines_of(grid) == [1, 1, 1, 1]
    assert_same_series(grid.cells[0].series, slow_series(b"".join(lines).decode()))


def test_a_line_named_wrongly_costs_time_not_values() -> None:
    # Blank lines hold no value: an index counts values, so the hint may point at the wrong line.
    # Every piece is decoded either way; the series equals the plain way's.
    from prefwatch.core.series import CellSeries

    pieces = []
    for i in range(0, 1200, 3):
        pieces += [
            line(i + 1, loss=0.1),
            b"\n",
            b"   \n",
            line(i + 2, loss=0.2),
            b'{"step": %d, "loss": null}\n' % (i + 3),
        ]
    text = b"".join(pieces) + line(5000, loss=0.3)
    series, exact = CellSeries(), CellSeries()
    columnar.add_blocks(series, [text], columnar.ColumnarDecoder())
    columnar._exact(exact, text, columnar.ColumnarDecoder())  # every line record by record
    assert_same_series(series, exact)
    assert len(series.train) == 1201 and series.rejected == {"wrong type": 400}


def finished_runs(root: Path, count: int) -> None:
    now = time.time() - 100
    for i in range(count):
        folder = root / f"{('dpo', 'simpo')[i % 2]}-r{(4, 8, 16, 32)[i // 2 % 4]}-seed{i // 8}"
        folder.mkdir()
        rows = [{"loss": 0.5, "rewards/margins": 1.0 + i, "step": s, "time": now + s} for s in range(1, 11)]
        rows += [{"eval_rewards/accuracies": 0.6, "eval_rewards/margins": 0.5, "step": 10, "time": now + 10}]
        rows += [{"train_runtime": 10.0, "step": 10}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_sweep_that_opens_on_the_overview_makes_its_panels_only_when_they_are_shown(tmp_path: Path) -> None:
    pytest.importorskip("textual")
    from textual.widgets import DataTable

    from prefwatch.tui.app import OVERVIEW_FROM, MonitorApp
    from prefwatch.tui.screens.grid import GridScreen
    from prefwatch.tui.screens.overview import OverviewScreen
    from prefwatch.tui.widgets.cell_panel import CellPanel

    finished_runs(tmp_path, OVERVIEW_FROM + 7)

    async def scenario() -> None:
        app = MonitorApp(open_path(tmp_path), mode="replay")
        async with app.run_test(size=(120, 36)) as pilot:
            deadline = time.monotonic() + 30
            while not (
                isinstance(app.screen, OverviewScreen)
                and app.screen.query(DataTable)
                and app.screen.table.row_count == OVERVIEW_FROM + 7
            ):
                assert time.monotonic() < deadline, "the overview did not open"
                await pilot.pause(0.05)
            grid_screen = app.screen_stack[0]
            assert isinstance(grid_screen, GridScreen)
            assert not grid_screen.cells.panels and not grid_screen.query(CellPanel)
            await pilot.press("escape")
            while len(grid_screen.query(CellPanel)) < OVERVIEW_FROM + 7:
                assert time.monotonic() < deadline, "the panels were not made"
                await pilot.pause(0.05)
            assert app.screen is grid_screen and len(grid_screen.cells.panels) == OVERVIEW_FROM + 7

    asyncio.run(scenario())


# ---- a refresh reads what changed, not the whole grid ------------------------------------------


def test_the_follower_says_which_folders_changed(tmp_path: Path) -> None:
    from prefwatch.ingest.watch import Follower

    folders = [tmp_path / name for name in ("a", "b", "c")]
    for folder in folders:
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("")
    taken: list[set[Path] | None] = []
    follower = Follower(folders, lambda: taken.append(follower.take_changed()), interval=60)
    with follower:
        assert follower.mode == "events"
        deadline = time.monotonic() + 30
        with open(folders[1] / "metrics.jsonl", "a") as f:
            f.write('{"step": 1}\n')
        while not any(taken):
            assert time.monotonic() < deadline, "no callback for the append"
            time.sleep(0.02)
        assert set().union(*filter(None, taken)) == {folders[1]}  # only the folder written to
        taken.clear()
        # A clock's tick: nothing to read again. (The write's trailing event, close after modify,
        # may still call back after this point: it names the same folder, never "everything".)
        follower.nudge(files=False)
        while not taken:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert all(t is not None and t <= {folders[1]} for t in taken)
        taken.clear()
        follower.nudge()  # anything may have changed: read everything
        while None not in taken:
            assert time.monotonic() < deadline, "a nudge did not say: read everything"
            time.sleep(0.02)
    polling = Follower(folders, lambda: None, poll=True)
    assert polling.take_changed() is None  # polled file systems may hide a change until a file is opened


def test_a_clock_tick_over_finished_cells_reads_no_file(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from prefwatch.analysis.incremental import IncrementalAnalysis
    from prefwatch.ingest.sources import CellSource

    finished_runs(tmp_path, 12)
    incremental = IncrementalAnalysis(open_path(tmp_path), heartbeat=0.0)  # every update is a heartbeat
    assert incremental.update() is not None
    polled: list[str] = []
    poll = CellSource.poll
    monkeypatch.setattr(CellSource, "poll", lambda self: polled.append(self.id) or poll(self))
    before = incremental.analysed
    assert incremental.update(only=set()) is None
    assert polled == [] and incremental.analysed == before
    one = incremental.source.cells[3]
    with open(one.directory / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"loss": 0.1, "step": 11, "time": time.time()}) + "\n")
    result = incremental.update(only={one.id})
    assert polled == [one.id] and incremental.changed == {one.id}
    assert result is not None and next(c for c in result.cells if c.source.id == one.id).source.series.last_step == 11


def test_statuses_are_read_again_only_when_their_file_changes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import os

    from prefwatch.files import rundir
    from prefwatch.run import jobs

    for index, state in enumerate(["finished", "running", "failed"]):
        cell = tmp_path / rundir.CELLS_DIR / f"dpo-r{4 << index}"
        cell.mkdir(parents=True)
        rundir.write_json_atomic(cell / rundir.CELL_FILE, {"index": index, "objective": "dpo", "rank": 4 << index})
        status = {"state": state, "host": None}
        if state == "running":
            status.update(pid=os.getpid(), pid_start=jobs.process_start_time(os.getpid()))
        rundir.write_json_atomic(cell / rundir.STATUS_FILE, status)
    grid = open_path(tmp_path)
    assert grid.managed
    reads: list[Path] = []
    read = jobs.read_status
    monkeypatch.setattr(jobs, "read_status", lambda d, s=None: reads.append(d) or read(d, s))
    now = [0.0]
    reader = jobs.StatusReader(recheck=5.0, clock=lambda: now[0])
    reader(grid)
    assert len(reads) == 3
    first = [c.handed_status for c in grid.cells]
    assert [s.state for s in first if s] == ["finished", "running", "failed"]
    reads.clear()
    now[0] = 1.0
    reader(grid)
    assert reads == [] and [c.handed_status for c in grid.cells] == first  # nothing changed: nothing read
    now[0] = 6.0
    reader(grid)
    running = grid.cells[1]
    assert reads == [running.directory]  # past the recheck: the job that has not ended is looked at again
    assert all(a is b for a, b in zip(first, (c.handed_status for c in grid.cells)))  # the same: kept as is
    reads.clear()
    rundir.write_json_atomic(running.directory / rundir.STATUS_FILE, {"state": "finished", "host": None})
    reader(grid)
    assert reads == [running.directory] and running.handed_status.state == "finished"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(test_incremental.operation, min_size=1, max_size=8))
def test_reading_only_the_changed_cell_equals_a_full_analysis(tmp_path_factory, operations) -> None:  # noqa: ANN001
    from prefwatch.analysis.analyse import analyse
    from prefwatch.analysis.incremental import IncrementalAnalysis

    root = tmp_path_factory.mktemp("grid")
    jobs = test_incremental.Jobs(root)
    clock = FakeClock()
    incremental = IncrementalAnalysis(open_path(root, clock=clock), heartbeat=float("inf"), clock=clock)
    incremental.update()
    for kind, cell, amount, flag in operations:
        test_incremental.apply_and_settle(jobs, kind, cell, amount, flag, clock)
        result = incremental.update(only={cell}) or incremental.last  # the follower saw this cell's folder change
        fresh = open_path(root, clock=clock)
        fresh.poll()
        assert result is not None
        assert result.to_json() == analyse(fresh, now=clock.time()).to_json(), f"after {kind} on {cell}"


def test_a_sweep_of_short_finished_logs_is_loaded_from_the_cache_when_reopened(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from prefwatch.ingest import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "sweep"
    for index in range(3):
        lines = [line(s, loss=1 / s, **{"rewards/margins": s / 100 + index}) for s in range(1, 801)]
        lines.append(b'{"train_runtime": 10.0, "train_loss": 0.4, "step": 800}\n')
        (root / f"dpo-r{4 << index}").mkdir(parents=True)
        (root / f"dpo-r{4 << index}" / "metrics.jsonl").write_bytes(b"".join(lines))
    sizes = [p.stat().st_size for p in root.rglob("metrics.jsonl")]
    assert all(cache.MIN_BYTES <= size < cache.STREAM_BYTES for size in sizes)  # short logs, 70-80 KB
    loaded: list[bool] = []
    load = cache.load
    monkeypatch.setattr(cache, "load", lambda log: loaded.append((hit := load(log)) is not None) or hit)
    first = open_path(root)
    first.poll()
    again = open_path(root)
    assert exact_lines_of(again) == []  # nothing parsed: every cell came from its entry
    assert loaded == [False] * 3 + [True] * 3
    for a, b in zip(first.cells, again.cells):
        assert_same_series(a.series, b.series)


def test_the_widest_rows_decide_the_fit_of_the_whole_review_table() -> None:
    import random

    from prefwatch.analysis.analyse import analyse
    from prefwatch.report.text import fits, review_table, split_pairs, widest_rows

    grid = open_path(Path(__file__).resolve().parent.parent / "sample_runs" / "tiny-demo")
    grid.poll()
    analysis = analyse(grid, now=0)
    rng = random.Random(7)

    def number() -> str:
        return f"{rng.uniform(-1, 1) * 10 ** rng.randint(-3, 4):.3g}"

    for trial in range(12):
        rows = [
            [
                "-".join(
                    rng.choice(["dpo", "simpo", "r16", "seed3", "lr5e-06", "a-much-longer-name"]) for _ in range(3)
                ),
                rng.choice(["finished", "running", "failed (exit 1)"]),
                str(rng.randint(1, 10 ** rng.randint(1, 6))),
                f"{number()}→{number()}",
                f"{number()}/{number()}",
                number(),
                number(),
                rng.choice(["–", "41/50", "7/100"]),
            ]
            for _ in range(rng.randint(1, 60))
        ]
        for shown in (rows, split_pairs(rows)):
            probe = widest_rows(shown)
            assert len(probe) <= 2 * len(shown[0])
            for width in (40, 60, 80, 100, 120):
                whole = fits(review_table(analysis, shown), shown, width)
                assert fits(review_table(analysis, probe), probe, width) == whole, (trial, width)


# ---- a large grid's first frame: its figures first, the findings and the verdict a moment later ----


def runs_with_findings(root: Path, count: int) -> set[str]:
    """``count`` finished runs; every fifth diverged (its loss NaN from step 8 on, an error finding).
    The ids of those."""
    now = time.time() - 100
    diverged = set()
    for i in range(count):
        name = f"{('dpo', 'simpo')[i % 2]}-r{(4, 8, 16, 32)[i // 2 % 4]}-seed{i // 8}"
        (root / name).mkdir()
        rows = [
            {"loss": float("nan") if i % 5 == 0 and s >= 8 else 0.7 - s / 100, "rewards/margins": s / 10, "step": s}
            for s in range(1, 11)
        ]
        rows += [{"eval_rewards/accuracies": 0.6, "eval_rewards/margins": 0.5, "step": 10, "time": now + 10}]
        rows += [{"train_runtime": 10.0, "step": 10}]
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if i % 5 == 0:
            diverged.add(name)
    return diverged


def test_a_large_grid_is_shown_with_its_figures_first_then_its_findings_with_no_toast(tmp_path: Path) -> None:
    import queue
    import threading

    from prefwatch.analysis.analyse import analyse
    from prefwatch.view.feed import FIRST_VALUES_FROM, Feed, Update
    from prefwatch.view.model import PENDING_HEADLINE

    diverged = runs_with_findings(tmp_path, FIRST_VALUES_FROM)
    updates: queue.Queue[Update] = queue.Queue()
    feed = Feed(open_path(tmp_path), updates.put, live=True, frame_wait=120)
    reader = threading.Thread(target=feed.start, daemon=True)
    reader.start()
    try:
        first = updates.get(timeout=120)
        assert first.view is not None and not first.view.complete and first.news is None
        assert len(first.view.cells) == FIRST_VALUES_FROM
        assert {(c.state, c.step, c.heldout_accuracy) for c in first.view.cells} == {("finished", 10, 0.6)}
        assert not any(c.findings for c in first.view.cells) and first.view.headline == PENDING_HEADLINE
        with pytest.raises(queue.Empty):  # the full read waits for the app's word that the frame is drawn
            updates.get(timeout=0.5)
        feed.drawn()
        full = updates.get(timeout=120)
        assert full.view is not None and full.view.complete
        assert {c.id for c in full.view.cells if c.severity == "error"} == diverged
        source = open_path(tmp_path)
        source.poll()
        assert full.view.headline == analyse(source).verdict.headline != PENDING_HEADLINE
        # The findings were there before the monitor opened: the complete view is the baseline, not
        # news (had the figures-only view been the baseline, each diverged cell would be a toast).
        assert full.news is None
        following = updates.get(timeout=120)  # the strip names the follower: the first read is over
        assert following.view is None and following.news is None
    finally:
        feed.stop()
        reader.join(timeout=60)


def test_a_feed_stopped_while_its_first_frame_is_drawn_ends_without_waiting(tmp_path: Path) -> None:
    import queue
    import threading

    from prefwatch.view.feed import FIRST_VALUES_FROM, Feed, Update

    runs_with_findings(tmp_path, FIRST_VALUES_FROM)
    updates: queue.Queue[Update] = queue.Queue()
    feed = Feed(open_path(tmp_path), updates.put, live=True, frame_wait=600)
    reader = threading.Thread(target=feed.start, daemon=True)
    reader.start()
    first = updates.get(timeout=120)
    assert first.view is not None and not first.view.complete
    feed.stop()  # the app closes before its first frame is drawn
    reader.join(timeout=120)
    assert not reader.is_alive() and feed.follower is None  # ended, and started no follower


def test_a_grid_below_the_threshold_gets_a_complete_first_view(tmp_path: Path) -> None:
    from prefwatch.view.feed import FIRST_VALUES_FROM, Feed, Update

    diverged = runs_with_findings(tmp_path, FIRST_VALUES_FROM - 1)
    updates: list[Update] = []
    Feed(open_path(tmp_path), updates.append, live=False, frame_wait=120).start()  # never waits: no draw asked
    views = [u.view for u in updates if u.view is not None]
    assert len(views) == 1 and views[0].complete
    assert {c.id for c in views[0].cells if c.severity == "error"} == diverged


def test_the_monitor_draws_a_large_grid_s_figures_then_its_verdict_without_a_toast(tmp_path: Path) -> None:
    pytest.importorskip("textual")
    from prefwatch.tui.app import MonitorApp
    from prefwatch.tui.screens.overview import OverviewScreen
    from prefwatch.view.feed import FIRST_VALUES_FROM, Update
    from prefwatch.view.model import GridView

    diverged = runs_with_findings(tmp_path, FIRST_VALUES_FROM)
    views: list[GridView] = []

    async def scenario() -> None:
        app = MonitorApp(open_path(tmp_path), mode="live")
        deliver = app.feed._deliver

        def recorded(update: Update) -> object:
            if update.view is not None:
                views.append(update.view)
            return deliver(update)

        app.feed._deliver = recorded
        async with app.run_test(size=(160, 48)) as pilot:
            deadline = time.monotonic() + 120
            while app.view is None or not app.view.complete:
                assert time.monotonic() < deadline, "no complete view"
                await pilot.pause(0.05)
            assert app.feed._drawn.is_set()  # the app said the figures were drawn
            await pilot.pause(0.3)
            assert isinstance(app.screen, OverviewScreen)
            assert {c.id for c in app.view.cells if c.severity == "error"} == diverged
            assert not app._notifications  # no toast for findings that were there before

    asyncio.run(scenario())
    assert [v.complete for v in views] == [False, True]  # the figures first, then the full view


def test_the_analysis_after_a_first_frame_of_figures_reads_no_file_again(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from prefwatch.analysis.analyse import analyse
    from prefwatch.analysis.incremental import IncrementalAnalysis
    from prefwatch.ingest.sources import CellSource

    diverged = runs_with_findings(tmp_path, 12)
    incremental = IncrementalAnalysis(open_path(tmp_path))
    figures = incremental.values()
    assert not figures.complete and not any(c.diagnosis.findings for c in figures.cells)
    polled: list[str] = []
    poll = CellSource.poll
    monkeypatch.setattr(CellSource, "poll", lambda self: polled.append(self.id) or poll(self))
    full = incremental.update()
    assert polled == [] and incremental.analysed == 12  # every cell analysed from what values() read
    assert full is not None and full.complete
    assert {c.source.id for c in full.cells if c.diagnosis.worst == "error"} == diverged
    source = open_path(tmp_path)
    source.poll()
    assert full.verdict.headline == analyse(source).verdict.headline
    incremental.update()  # the next update reads the files as before
    assert set(polled) == {c.id for c in incremental.source.cells}
