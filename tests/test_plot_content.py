"""What ``report --plot`` draws, not only that it writes a PNG: one panel per cell in the grid's layout,
its curves, axis labels, a line at each finding's step in the finding's colour, and the verdict."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

from crafted import Cell, write_grid  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from prefwatch.cli import main  # noqa: E402


def test_the_plot_shows_each_cells_curves_findings_and_the_verdict(tmp_path: Path, monkeypatch) -> None:
    cells = [
        Cell("dpo-r16", "dpo", 16, 62, state="failed"),
        Cell("dpo-r8", "dpo", 8, 60),
        Cell("simpo-r16", "simpo", 16, 80, train_margin=2.0, heldout_margin=1.5),
        Cell("simpo-r8", "simpo", 8, 78, train_margin=2.0, heldout_margin=1.5, peaked=True, nan_from=90),
    ]
    grid = write_grid(tmp_path, "plotted", cells)
    saved: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args, **kwargs):  # the figure is closed after saving: keep a reference to read it
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    target = tmp_path / "grid.png"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["report", str(grid), "--plot", str(target)])
    assert code == 3  # a failed cell never finished: not decisive
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = saved
    assert figure.texts[0].get_text() == "plotted: simpo r=16 (not decisive)"
    margin_axes = {
        ax.get_title().split(" ")[0]: ax
        for ax in figure.axes
        if ax.get_visible() and ax.get_ylabel() == "reward margin"
    }
    assert set(margin_axes) == {"dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"}
    # rows are objectives, columns ranks, in the grid's order
    positions = {
        cell: ax.get_subplotspec().rowspan.start * 10 + ax.get_subplotspec().colspan.start
        for cell, ax in margin_axes.items()
    }
    assert positions == {"dpo-r16": 0, "dpo-r8": 1, "simpo-r16": 10, "simpo-r8": 11}
    assert margin_axes["dpo-r16"].get_title() == "dpo-r16 (failed): no findings"
    assert margin_axes["simpo-r8"].get_title() == "simpo-r8 (finished): non_finite, overoptimization"
    for cell, ax in margin_axes.items():
        assert ax.get_xlabel() == "step"
        labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert labels == ["train margin (EMA)", "held-out margin"]
        curves = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
        assert len(curves) == 3  # raw train margin, its EMA, held-out margin
        raw = curves[0]
        assert len(raw.get_xdata()) == 100 and raw.get_xdata()[0] == 1 and raw.get_xdata()[-1] == 100
        assert len(curves[2].get_xdata()) == 10  # an evaluation every 10 steps
        twin = next(a for a in figure.axes if a is not ax and a.bbox.bounds == ax.bbox.bounds)
        assert twin.get_ylabel() == "held-out accuracy" and twin.get_ylim() == (0.0, 1.0)
        (accuracy,) = twin.get_lines()
        assert accuracy.get_ydata()[-1] == pytest.approx(
            {"dpo-r16": 0.62, "dpo-r8": 0.6, "simpo-r16": 0.8, "simpo-r8": 0.78}[cell]
        )
    # Vertical lines (two points): the held-out peak, and one per finding with a step, in its severity's colour.
    markers = {
        cell: sorted(
            (float(line.get_xdata()[0]), line.get_color()) for line in ax.get_lines() if len(line.get_xdata()) == 2
        )
        for cell, ax in margin_axes.items()
    }
    assert markers["simpo-r8"] == sorted([(30.0, "tab:purple"), (30.0, "tab:orange"), (90.0, "tab:red")])
    assert [step for step, colour in markers["dpo-r8"]] == [100.0]  # the peak only: accuracy rises to the end
    # The picture itself holds the warning's and the error's lines (alpha 0.8 over white), not a blank canvas.
    pixels = matplotlib.image.imread(target)[..., :3].reshape(-1, 3)
    for name in ("tab:orange", "tab:red"):
        drawn = 0.8 * np.array(to_rgba(name)[:3]) + 0.2
        assert (np.abs(pixels - drawn).max(axis=1) < 0.1).sum() >= 200, name  # a 1.2 pt line, full height
