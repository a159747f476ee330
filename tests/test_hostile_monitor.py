"""The monitor on hostile input (issue 11): one damaged cell does not stop the others being shown, and a
cell id with Textual markup never becomes markup (a clickable action) in a notification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("textual")

from hostile import BAD_CELL, CASES, GOOD_CELL, _append, sample_grid  # noqa: E402
from test_tui import app_for, make_grid, panels, run, wait_for  # noqa: E402

from prefwatch.run import jobs  # noqa: E402

METRICS_CASES = [name for name in CASES if name.startswith(("step", "value", "nested", "key"))]


def every_hostile_value(tmp: Path) -> Path:
    """The sample grid with every hostile log line in one cell, and bad cell.json labels in another."""
    grid = sample_grid(tmp)
    for name in METRICS_CASES:
        line = (CASES[name](tmp / name.replace(" ", "_")) / "cells" / BAD_CELL / "metrics.jsonl").read_bytes()
        _append(grid / "cells" / BAD_CELL / "metrics.jsonl", line[line.rstrip(b"\n").rfind(b"\n") + 1 :])
    _append(grid / "cells" / BAD_CELL / "eval_pairs.jsonl", b'{"step": Infinity, "chosen": [1], "rejected": [0]}\n')
    (grid / "cells" / BAD_CELL / "data.json").write_bytes(b'{"heldout_pairs": NaN}')
    other = grid / "cells" / "simpo-r8" / "cell.json"
    cell = json.loads(other.read_text())
    other.write_text(json.dumps({**cell, "objective": ["simpo"], "rank": "8", "seed": float("nan")}))
    return grid


@run
async def test_one_damaged_cell_leaves_the_others_on_screen(tmp_path: Path) -> None:
    app = app_for(every_hostile_value(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and len(panels(app)) == 4)
        assert app.feed.error is None
        shown = panels(app)
        assert shown[GOOD_CELL].view.step == 100
        assert shown[BAD_CELL].view.step >= 100  # its good lines are all there
        cell = next(c for c in app.source.cells if c.id == BAD_CELL)
        rejected = cell.series.rejected
        assert rejected["bad step"] >= 5 and rejected["nested too deep"] == 2 and rejected["bad metric name"] == 3


@run
async def test_a_cell_id_with_markup_stays_text_in_notifications(tmp_path: Path) -> None:
    grid = make_grid(tmp_path, cells=[("dpo", 16)])
    markup = "[@click=app.quit]x[b]"
    (grid / "cells" / "dpo-r16").rename(grid / "cells" / f"dpo-r16-{markup}")
    app = app_for(grid, mode="live")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.feed.follower is not None and len(panels(app)) == 1)
        await pilot.pause()
        for key in ("r", "s"):  # a finished cell: neither restarts nor stops, each says so naming the cell
            await pilot.press(key)
        await wait_for(pilot, lambda: sum(markup in n.message for n in app._notifications) == 2)
        for notification in app._notifications:
            assert not notification.markup, notification.message
        assert app.is_running  # the "click" was never an action
        assert panels(app)[f"dpo-r16-{markup}"].view.state == jobs.FINISHED
