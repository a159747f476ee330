"""Golden screens: the monitor's screens compared with committed SVG files (pytest-textual-snapshot).

Any visual change (a colour, a border, alignment, a swapped panel, a chart drawn upside down) fails
until the golden files are updated on purpose, with one command::

    make golden        # = pytest tests/test_golden.py --snapshot-update

then look at the new files under tests/__snapshots__/test_golden/ (they are SVG: open them in a
browser) and commit them with the change that caused them.

The grid is crafted (tests/crafted.py) with fixed log times and read from a relative path, so that
nothing in the picture depends on the clock or on the temporary folder: the SVG is compared as
written, except the id Rich gives each export (the plugin normalises it).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("pytest_textual_snapshot")

from crafted import Cell, write_grid  # noqa: E402

from prefwatch.ingest.discover import open_path  # noqa: E402
from prefwatch.tui.app import MonitorApp  # noqa: E402
from prefwatch.tui.widgets.cell_panel import CellPanel  # noqa: E402

SIZES = {"80x24": (80, 24), "160x48": (160, 48)}
LOGGED_AT = 1_800_000_000.0  # the crafted logs' last line, a fixed moment


def golden_grid(root: Path) -> Path:
    """A 2x2 grid with a clean cell, a failed one (exit 1), an over-optimising one (a warning) and one
    whose SimPO margins are cleaner; all but the failed one sampled completions (completions.jsonl)."""
    cells = [
        Cell("dpo-r16", "dpo", 16, 62, state="failed", last_time=LOGGED_AT),
        Cell("dpo-r8", "dpo", 8, 60, last_time=LOGGED_AT, completions=0.4),
        Cell("simpo-r16", "simpo", 16, 80, train_margin=2.0, heldout_margin=1.5, last_time=LOGGED_AT, completions=1.2),
        Cell(
            "simpo-r8",
            "simpo",
            8,
            78,
            train_margin=2.0,
            heldout_margin=1.5,
            peaked=True,
            last_time=LOGGED_AT,
            completions=0.9,
        ),
    ]
    return write_grid(root, "golden", cells)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MonitorApp:
    golden_grid(tmp_path)
    monkeypatch.chdir(tmp_path)  # the screen names the run directory: "golden", whatever the temporary folder
    return MonitorApp(open_path(Path("golden")), mode="replay")


async def loaded(pilot) -> None:
    """Every panel drawn and the first one focused (the view comes from a reading thread)."""
    app = pilot.app
    deadline = time.monotonic() + 60
    while not (app.view is not None and len(app.screen.query(CellPanel)) == 4 and app.screen.focused is not None):
        assert time.monotonic() < deadline, "the monitor did not draw the grid within 60 s"
        await pilot.pause(0.05)
    await pilot.pause()


@pytest.mark.parametrize("size", list(SIZES))
def test_grid(snap_compare, app: MonitorApp, size: str) -> None:
    assert snap_compare(app, terminal_size=SIZES[size], run_before=loaded)


@pytest.mark.parametrize("size", list(SIZES))
def test_cell_screen(snap_compare, app: MonitorApp, size: str) -> None:
    """The over-optimising cell (simpo-r8: down, right from the first panel) and its charts."""
    assert snap_compare(app, press=["down", "right", "enter"], terminal_size=SIZES[size], run_before=loaded)


@pytest.mark.parametrize("size", list(SIZES))
def test_compare(snap_compare, app: MonitorApp, size: str) -> None:
    assert snap_compare(app, press=["c"], terminal_size=SIZES[size], run_before=loaded)


@pytest.mark.parametrize("size", list(SIZES))
def test_help(snap_compare, app: MonitorApp, size: str) -> None:
    assert snap_compare(app, press=["question_mark"], terminal_size=SIZES[size], run_before=loaded)


@pytest.mark.parametrize("size", list(SIZES))
def test_completions_pane(snap_compare, app: MonitorApp, size: str) -> None:
    """What simpo-r16 (down from the first panel) writes: the reference's answers, the last three evaluations'."""
    assert snap_compare(app, press=["down", "w"], terminal_size=SIZES[size], run_before=loaded)
