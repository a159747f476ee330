"""Stopping and restarting cells from the monitor: ask first, then hand the request to the jobs layer.

Kept apart from the app: it is the monitor's one way of acting on jobs, and every path through it
goes through a confirmation and ``prefwatch.run.jobs`` (which proves a process is the cell's job
before it signals it). The jobs layer may wait out a grace period, so it runs off the UI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from textual.app import App
from textual.content import Content
from textual.notifications import SeverityLevel

from prefwatch.core.textsafe import plain
from prefwatch.ingest.sources import GridSource
from prefwatch.run import jobs
from prefwatch.tui.screens.confirm import ConfirmScreen
from prefwatch.tui.text import literal
from prefwatch.view.model import CellView, GridView

SELECT_FIRST = "Select a cell first (arrow keys)."


class CellControl:
    """Stop a cell, stop the grid, restart a cell: each asks, then runs in a worker and says what happened.

    ``reread`` is called once the jobs layer has answered, so the new states show without waiting
    for the next line.
    """

    def __init__(self, app: App[int], source: GridSource, reread: Callable[[], None]) -> None:
        self.app = app
        self.source = source
        self.reread = reread

    def stop_cell(self, cell: CellView | None) -> None:
        if not self._launched(cell, "stopped"):
            return
        assert cell is not None
        if not cell.stoppable:
            self.app.notify(plain(f"{cell.id} has ended already ({cell.status})."), markup=False)
            return
        question = Content("").join(
            [Content("Stop cell "), literal(cell.id, "bold"), Content(f"? It is {cell.status}; its job gets SIGTERM.")]
        )
        self._ask(question, "Stop it (y)", partial(self._stop, cell.id))

    def stop_grid(self, view: GridView | None) -> None:
        """Stop every cell that has not ended."""
        if view is None or not self.source.managed:
            self.app.notify("Only a grid that prefwatch launched can be stopped from here.", severity="warning")
            return
        running = [c for c in view.cells if c.stoppable]
        if not running:
            self.app.notify("Every cell has ended already.")
            return
        question = Content(f"Stop the whole grid? {len(running)} cell(s) have not ended; running jobs get SIGTERM.")
        self._ask(question, "Stop it (y)", partial(self._stop, None))

    def restart_cell(self, cell: CellView | None) -> None:
        """Start a failed, stopped or lost cell again, from its last checkpoint."""
        if not self._launched(cell, "restarted"):
            return
        assert cell is not None
        if cell.state not in jobs.RESTARTABLE:
            self.app.notify(
                plain(f"{cell.id} is {cell.status}: only a failed, stopped or lost cell restarts."), markup=False
            )
            return
        text = f"Restart cell {cell.id} from its last checkpoint? It is {cell.status}."
        self._ask(literal(text), "Restart (y)", partial(self._restart, [cell.id]))

    def _launched(self, cell: CellView | None, verb: str) -> bool:
        if cell is None:
            self.app.notify(SELECT_FIRST, severity="warning")
            return False
        if not (self.source.managed and cell.managed):
            self.app.notify(f"Only cells that prefwatch launched can be {verb} from here.", severity="warning")
            return False
        return True

    def _ask(self, question: Content, yes_label: str, then: Callable[[], None]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.app.run_worker(then, thread=True, group="stop")

        self.app.push_screen(ConfirmScreen(question, yes_label=yes_label), answered)

    def _say(self, text: object, severity: SeverityLevel = "information") -> None:
        """A notification from the worker's thread (text from the jobs layer shown literally)."""
        self.app.call_from_thread(self.app.notify, plain(text), severity=severity, markup=False)

    def _restart(self, cell_ids: list[str]) -> None:
        try:
            started = jobs.restart_cells(self.source.root, cell_ids)
        except (jobs.LaunchError, OSError) as exc:
            self._say(exc, severity="error")
            return
        self._say(f"restarting {', '.join(started)}.")
        self.reread()

    def _stop(self, cell_id: str | None) -> None:
        """Ask the jobs layer to stop one cell (None: the grid)."""
        try:
            outcome = jobs.request_stop(self.source.root, [cell_id] if cell_id else None)
        except (jobs.LaunchError, OSError) as exc:
            self._say(exc, severity="error")
            return
        for line in outcome.refused:
            self._say(line, severity="error")
        stopped = outcome.stopped
        if cell_id is None:
            text = f"asked {len(stopped)} cell(s) to stop: {', '.join(stopped)}" if stopped else "no cell to stop"
        else:
            text = f"{cell_id} " + ("asked to stop" if stopped else "had ended already")
        self._say(f"{text}.")
        self.reread()
