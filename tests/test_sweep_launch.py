"""A launched β × learning-rate grid on the embedded model (real TRL training, few steps), judged as such.

The cells differ only by β and the learning rate (``[grid] betas``, ``learning_rates``): the verdict must
compare them (never "nothing was compared"), name the best setting, give each factor's effect and the
one that decides the most, and never call two settings seeds of one. The expected numbers are computed
here from the cells' own per-pair results (eval_pairs.jsonl), independently of prefwatch's rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import launched, prefwatch
from test_tui import run as run_async

from prefwatch.analysis.analyse import analyse
from prefwatch.ingest.discover import open_path
from prefwatch.tui.screens.overview import factor_names, sort_key
from prefwatch.view.model import grid_view

SWEEP = """
name = "sweep"
[train]
max_steps = 20
eval_every = 10
save_every = 20
[grid]
objectives = ["dpo"]
ranks = [8]
betas = [0.1, 0.5]
learning_rates = [5e-4, 5e-5]
[resources]
devices = "cpu"
"""
SETTINGS = {
    "dpo-r8-b0.1-lr0.0005": (0.1, 5e-4),
    "dpo-r8-b0.1-lr5e-05": (0.1, 5e-5),
    "dpo-r8-b0.5-lr0.0005": (0.5, 5e-4),
    "dpo-r8-b0.5-lr5e-05": (0.5, 5e-5),
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return launched(tmp_path_factory.mktemp("sweep"), "sweep", SWEEP, list(SETTINGS), timeout=900)


def pairs_won(run: Path, cell: str) -> int:
    """Held-out pairs ranked right at the cell's last evaluation, from its per-pair results."""
    last = json.loads((run / "cells" / cell / "eval_pairs.jsonl").read_text().splitlines()[-1])
    return int(np.sum(np.asarray(last["chosen"]) > np.asarray(last["rejected"])))


def report(run: Path) -> dict:
    result = prefwatch("report", str(run), "--format", "json")
    assert result.returncode in (0, 3), result.stderr
    return json.loads(result.stdout)


def test_each_cell_says_its_beta_and_learning_rate_and_where_they_were_read(sweep: Path) -> None:
    cells = {c["id"]: c for c in report(sweep)["cells"]}
    assert sorted(cells) == sorted(SETTINGS)
    for cell_id, (beta, lr) in SETTINGS.items():
        factors = cells[cell_id]["factors"]
        assert (factors["beta"]["value"], factors["beta"]["from"], factors["beta"]["detail"]) == (
            beta,
            "cell.json",
            "objective_params.beta",
        )
        assert (factors["lr"]["value"], factors["lr"]["from"]) == (lr, "cell.json")
        assert (factors["seed"]["value"], factors["rank"]["value"], factors["model"]["value"]) == (0, 8, "tiny")


def test_the_beta_by_learning_rate_grid_is_judged_as_such(sweep: Path) -> None:
    won = {cell: pairs_won(sweep, cell) for cell in SETTINGS}
    verdict = report(sweep)["verdict"]
    assert not any("nothing was compared" in r for r in verdict["reasons"])
    assert "only dpo cells to compare: the objective is not in question" in verdict["reasons"]
    assert not verdict["groups"]  # one model, one data set, one held-out set: one grid
    top = max(won.values())
    best = [cell for cell, n in won.items() if n == top]
    ranked = sorted(won.values(), reverse=True)
    if len(best) == 1:
        beta, lr = SETTINGS[best[0]]
        assert verdict["setting"] == {"beta": f"{beta:g}", "lr": f"{lr:g}"}
        assert any(
            r.startswith(f"best setting of β, learning rate: β={beta:g} lr={lr:g} wins {top}")
            for r in verdict["reasons"]
        )
        assert any("the next, " in r and r.endswith(f", {ranked[1]}") for r in verdict["reasons"])
    else:
        assert verdict["setting"] == {} and not verdict["decisive"]
    # Each factor's effect: the spread of its two levels' mean held-out accuracy (100 pairs, one seed each).
    effects = {e["factor"]: e for e in verdict["factor_effects"]}
    assert set(effects) == {"beta", "lr"}
    for factor, index in (("beta", 0), ("lr", 1)):
        levels: dict[float, list[int]] = {}
        for cell, setting in SETTINGS.items():
            levels.setdefault(setting[index], []).append(won[cell])
        means = [np.mean(v) / 100 for v in levels.values()]
        assert effects[factor]["size"] == pytest.approx(max(means) - min(means))
        assert effects[factor]["pairs"] == pytest.approx(100 * (max(means) - min(means)))
    strongest = max(effects.values(), key=lambda e: e["size"])
    if strongest["size"] > 0:
        name = {"beta": "β", "lr": "learning rate"}[strongest["factor"]]
        assert verdict["decides"].startswith(f"{name} decides the most")
    text = prefwatch("report", str(sweep)).stdout
    assert "seed 0:" not in text and "seeds)" not in text  # four settings of one seed: nobody's replicate


@run_async
async def test_the_overview_groups_and_sorts_the_sweep_by_beta_and_learning_rate(sweep: Path) -> None:
    grid = open_path(sweep)
    grid.poll()
    view = grid_view(analyse(grid))
    assert factor_names(view) == ["beta", "lr"]
    by_lr = sorted(view.cells, key=lambda c: sort_key(c, "name", "lr"))
    assert [c.factors.get("lr") for c in by_lr] == [5e-5, 5e-5, 5e-4, 5e-4]  # numbers as numbers
    from prefwatch.tui.app import MonitorApp
    from prefwatch.tui.screens.overview import OverviewScreen

    app = MonitorApp(open_path(sweep), mode="replay")
    async with app.run_test(size=(120, 36)) as pilot:
        deadline = 200
        while app.view is None and deadline:
            await pilot.pause(0.1)
            deadline -= 1
        await pilot.press("o")
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, OverviewScreen) and screen.group == "beta"
        await pilot.press("f")
        await pilot.pause(0.2)
        assert screen.group == "lr"
        table = screen.table
        shown = [table.get_row_at(i)[0].plain for i in range(table.row_count)]
        assert shown == ["5e-05", "5e-05", "0.0005", "0.0005"]
