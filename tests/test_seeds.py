"""Seeds as bands on a real two-seed grid (the embedded tiny model): one line per setting with its
spread in the Markdown, HTML and PNG reports and in the monitor's strip and compare screen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import launched, prefwatch
from test_tui import app_for, run, screen_text
from test_tui import wait_for as wait_in_app

from prefwatch.analysis.analyse import analyse
from prefwatch.ingest.discover import open_path
from prefwatch.report.html import render_html

SEEDED = """
name = "seeded"
[train]
max_steps = 40
eval_every = 10
save_every = 40
seeds = [0, 1]
[grid]
objectives = ["simpo"]
ranks = [8]
[resources]
devices = "cpu"
"""
CELLS = ["simpo-r8-seed0", "simpo-r8-seed1"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    return launched(tmp_path_factory.mktemp("seeded"), "seeded", SEEDED, CELLS)


def analysed(run: Path):  # noqa: ANN201 (a GridAnalysis)
    grid = open_path(run)
    grid.poll()
    return analyse(grid)


def test_the_reports_draw_one_band_per_setting(seeded):
    analysis = analysed(seeded)
    finals = [c.diagnosis.review.heldout_accuracy for c in analysis.cells]
    assert len(finals) == 2 and None not in finals
    markdown = prefwatch("report", str(seeded), "--format", "md").stdout
    line = (
        f"simpo r=8 (2 seeds): held-out accuracy {np.mean(finals):.2f}, "
        f"min–max across seeds {min(finals):.2f}–{max(finals):.2f}"
    )
    assert line in markdown
    page = render_html(analysis)
    assert page.count('class="band"') == 1 and page.count("<svg") == 3  # one band, and each seed's own chart
    from prefwatch.report.plot import draw

    figure = draw(analysis)
    band_axes = [ax for ax in figure.axes if "(2 seeds)" in ax.get_title()]
    assert len(band_axes) == 1 and len(band_axes[0].collections) == 1  # fill_between: the band
    band = band_axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() <= min(finals) and band.max() >= max(finals)
    seeds_drawn = [ax for ax in figure.axes if ax.get_visible() and "-seed" in ax.get_title()]
    assert len(seeds_drawn) == 2  # the cell charts still show each seed


def test_the_monitor_shows_seeds_as_bands(seeded):
    from prefwatch.tui.screens.compare import CompareScreen

    finals = [c.diagnosis.review.heldout_accuracy for c in analysed(seeded).cells]

    @run
    async def check() -> None:
        app = app_for(seeded)
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_in_app(pilot, lambda: app.view is not None and "seeds, held-out acc." in screen_text(app), 30)
            spread = f"simpo r=8 (2 seeds) {np.mean(finals):.2f} [{min(finals):.2f}–{max(finals):.2f}]"
            assert spread in screen_text(app)
            await pilot.press("c")
            await wait_in_app(pilot, lambda: isinstance(app.screen, CompareScreen))
            screen = app.screen
            await wait_in_app(pilot, lambda: "simpo r=8 (2 seeds)" in screen_text(app))
            assert "band: min–max across seeds" in screen_text(app)
            assert "simpo-r8-seed0" not in screen_text(app)  # one line for the setting, not one per seed
            chart = screen.query(".group").first().query_one("BrailleChart")
            assert list(chart._curve_classes) == ["raw-0", "raw-0", "curve-0"]
            await pilot.press("b")
            await wait_in_app(pilot, lambda: "simpo-r8-seed0" in screen_text(app))
            assert list(chart._curve_classes) == ["curve-0", "curve-1"]

    check()
