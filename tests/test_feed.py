"""The monitor's feed without a screen: it reads, paces and tells news, and hands each view over.

The feed runs here as the monitor runs it (a first read, then a watchdog follower on real files that
grow), but with a queue in place of the app: what it delivers is what the screens would draw.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prefwatch.analysis.analyse import analyse
from prefwatch.files import rundir
from prefwatch.ingest.discover import open_path
from prefwatch.run import jobs
from prefwatch.view.feed import CPU_BUDGET, MAX_REDRAW_INTERVAL, READ_SHARE, Feed, Pacer, Update

SAMPLE = Path(__file__).resolve().parent.parent / "sample_runs" / "tiny-demo"


def next_update(updates: queue.Queue[Update], wanted: Callable[[Update], bool], seen: list[Update]) -> Update:
    """The first update that is ``wanted`` (each one looked at is kept in ``seen``); generous deadline."""
    deadline = time.monotonic() + 60
    while True:
        update = updates.get(timeout=max(0.01, deadline - time.monotonic()))
        seen.append(update)
        if wanted(update):
            return update


def step_of(update: Update, cell_id: str) -> int | None:
    cell = update.view.cell(cell_id) if update.view is not None else None
    return cell.step if cell is not None else None


def test_the_feed_reads_a_grid_without_textual() -> None:
    """In a fresh interpreter: the feed reads the sample grid and decides its verdict, and neither
    Textual nor Rich is imported on the way (the monitor's reading runs without a terminal)."""
    code = (
        "import sys\n"
        "from prefwatch.ingest.discover import open_path\n"
        "from prefwatch.view.feed import Feed\n"
        "got = []\n"
        "Feed(open_path(sys.argv[1]), got.append, live=False).start()\n"
        "views = [u.view for u in got if u.view is not None]\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(len(views), len(views[-1].cells), views[-1].headline, loaded, sep='\\t')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(SAMPLE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    views, cells, headline, loaded = done.stdout.rstrip("\n").split("\t")
    assert (views, cells) == ("1", "4")
    source = open_path(SAMPLE)
    source.poll()
    jobs.hand_statuses(source)  # as the report reads it
    assert headline == analyse(source).verdict.headline == "dpo r=8 (decisive)"
    assert loaded == "[]"


def test_a_live_feed_delivers_new_lines_and_tells_an_event_once(tmp_path: Path) -> None:
    from tests.test_tui import make_grid, train_record, write_lines

    grid = make_grid(tmp_path, steps=20, state=jobs.RUNNING)
    updates: queue.Queue[Update] = queue.Queue()
    feed = Feed(open_path(grid), updates.put, live=True)
    reader = threading.Thread(target=feed.start, daemon=True)
    reader.start()
    seen: list[Update] = []
    try:
        first = next_update(updates, lambda u: u.view is not None, seen)
        assert step_of(first, "dpo-r16") == 20 and first.news is None  # the first view is the baseline
        following = next_update(updates, lambda u: u.view is None, seen)  # the strip names the follower now
        assert following.label in ("live (events)", "live (polling)")

        write_lines(grid / "cells" / "dpo-r16" / rundir.METRICS_FILE, [train_record(21, "dpo", 16)])
        assert next_update(updates, lambda u: step_of(u, "dpo-r16") == 21, seen).news is None

        cell_dir = grid / "cells" / "dpo-r8"
        rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, {"state": jobs.FAILED, "exit_code": 1, "host": None})
        failed = next_update(updates, lambda u: u.news is not None, seen)
        assert failed.news is not None and "dpo-r8: failed" in failed.news.text and failed.news.severity == "error"
        assert failed.view is not None and failed.view.cell("dpo-r8").state == jobs.FAILED  # type: ignore[union-attr]

        since = len(seen)
        write_lines(grid / "cells" / "dpo-r16" / rundir.METRICS_FILE, [train_record(22, "dpo", 16)])
        next_update(updates, lambda u: step_of(u, "dpo-r16") == 22, seen)
        assert not [u for u in seen[since:] if u.news is not None and "dpo-r8" in u.news.text]  # told once
    finally:
        feed.stop()
        reader.join(timeout=60)
    assert feed.follower is not None and feed.follower._thread is None  # the follower stopped with the feed


def test_a_failing_read_is_one_line_in_the_strip_and_the_next_read_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_tui import make_grid

    grid = make_grid(tmp_path, steps=5, cells=[("dpo", 16)])
    updates: list[Update] = []
    feed = Feed(open_path(grid), updates.append, live=False)
    working = feed.incremental.view

    def broken(only: set[str] | None = None) -> None:
        raise RuntimeError("disk on fire\x1b[31m")

    monkeypatch.setattr(feed.incremental, "view", broken)
    feed.start()
    assert updates[-1].view is None  # nothing to draw: the strip says why, escapes shown, not run
    assert updates[-1].error == updates[-1].message == "could not read the logs: RuntimeError: disk on fire\\x1b[31m"
    monkeypatch.setattr(feed.incremental, "view", working)
    feed.refresh()
    assert updates[-1].view is not None and updates[-1].error is None and feed.error is None
    with pytest.raises(AttributeError):
        updates[-1].label = "live"  # type: ignore[misc]  # frozen: handed between threads, never changed


def test_the_pacer_widens_under_load_and_narrows_when_idle() -> None:
    wall, cpu = [0.0], [0.0]
    pacer = Pacer(0.1, clock=lambda: wall[0], cpu=lambda: cpu[0])
    assert pacer.next_interval(0.0) == 0.1  # under a second since the last sample: as it was
    wall[0], cpu[0] = 1.0, 5 * CPU_BUDGET  # five times the budget over a second
    assert pacer.next_interval(0.0) == pytest.approx(MAX_REDRAW_INTERVAL)  # widened, never past the cap
    wall[0] = 2.0  # an idle second
    assert pacer.next_interval(0.0) == pytest.approx(max(0.1, MAX_REDRAW_INTERVAL / 1.5))
    assert pacer.next_interval(0.5) == pytest.approx(0.5 / READ_SHARE)  # a long read: at most its share of a core


def test_a_toast_names_one_event_a_line_and_shows_names_literally() -> None:
    """Two cells failing in one refresh are two lines of the toast; a newline inside a cell's name is
    data, shown as an escape, never a line break of its own."""
    from types import SimpleNamespace

    from prefwatch.view.feed import Alerts

    def view(states: list[str]) -> Any:
        names = ["dpo-r16", "simpo\nr8"]
        cells = [SimpleNamespace(id=n, state=s, status=s, findings=()) for n, s in zip(names, states, strict=True)]
        return SimpleNamespace(name="grid", cells=cells, complete=True)

    alerts = Alerts()
    assert alerts.news(view([jobs.RUNNING, jobs.RUNNING])) is None  # the baseline
    news = alerts.news(view([jobs.FAILED, jobs.FAILED]))
    assert news is not None and news.severity == "error"
    lines = news.text.split("\n")
    assert len(lines) == 2, news.text
    assert lines[0].startswith("dpo-r16: failed") and lines[1].startswith("simpo\\x0ar8: failed"), lines
