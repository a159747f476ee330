"""What a grid does about what it sees, with nobody watching: stop rules, alerts, and the follower
that applies both (a thread of the local supervisor, or ``prefwatch attach --headless`` for Slurm).

``[policy] stop_on`` names the findings that stop a running cell:
  non_finite         the run diverged (NaN or infinite loss, gradients or rewards): every further
                     step burns the device for nothing. The default.
  frozen             the weights do not move (grad_norm exactly 0, or the same batches giving the same
                     rewards again): the run trains nothing, however long it runs.
  overoptimization   held-out accuracy has not beaten its best for ``patience`` evaluations: the cell
                     has passed its peak (its best adapter is kept in ``best/``, so nothing is lost).

Stopping is the normal stop (``jobs.request_stop``) with the reason recorded: the cell reads
``stopped (non_finite)`` in ``status`` and the report. Data flows one way: logs -> analysis ->
decision -> the jobs layer; this module never writes into a cell itself.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from prefwatch.act import alerts
from prefwatch.analysis.analyse import CellAnalysis, GridAnalysis, analyse
from prefwatch.core.diagnose import heldout_accuracy_series
from prefwatch.files import rundir
from prefwatch.files.grid import GridError, load_tables
from prefwatch.files.settings import PolicySettings, Settings
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.sources import GridSource, SourceError
from prefwatch.run import jobs

FOLLOW_SECONDS = 2.0  # how often the follower reads the logs: findings are about windows, not lines


@dataclass(frozen=True)
class StopPolicy:
    stop_on: frozenset[str] = frozenset({"non_finite"})
    patience: int = 3

    @classmethod
    def from_settings(cls, table: PolicySettings) -> StopPolicy:
        return cls(frozenset(table.stop_on), table.patience)

    def reason(self, cell: CellAnalysis) -> str | None:
        """Why this running cell should stop now, or None."""
        if cell.status.state != jobs.RUNNING:
            return None
        if "non_finite" in self.stop_on and cell.diagnosis.has("non_finite"):
            return "non_finite"
        if "frozen" in self.stop_on and cell.diagnosis.has("frozen"):
            return "frozen"
        if "overoptimization" in self.stop_on:
            past = evaluations_past_best(cell)
            if past is not None and past >= self.patience:
                return "overoptimization"
        return None


def evaluations_past_best(cell: CellAnalysis) -> int | None:
    """Evaluations since held-out accuracy was last at its best (the first time it reached it)."""
    _, accuracy = heldout_accuracy_series(cell.source.series, cell.source.pairs)
    finite = np.isfinite(accuracy)
    if not finite.any():
        return None
    best = int(np.argmax(np.where(finite, accuracy, -np.inf)))
    return len(accuracy) - 1 - best


def cell_facts(cell: CellAnalysis) -> alerts.CellFacts:
    findings = tuple(alerts.FindingFacts(f.kind, f.severity, f.message, f.step) for f in cell.diagnosis.findings)
    status = "stalled" if cell.state == "stalled" else cell.status.describe()
    return alerts.CellFacts(cell.source.id, cell.state, status, findings)


def verdict_evidence(analysis: GridAnalysis) -> list[str]:
    verdict = analysis.verdict
    return [
        *verdict.reasons,
        *(c.describe() for c in verdict.comparisons),
        *(f"held-out accuracy by {k}: {v}" for k, v in verdict.effects.items()),
        *(f"would decide it: {n}" for n in verdict.needs),
    ]


def grid_settings(run_dir: Path, log: Callable[[str], None]) -> Settings:
    """[alerts] and [policy] from the run's grid.toml; the defaults when it has none or they do not validate
    (the other tables: their defaults)."""
    path = run_dir / rundir.GRID_FILE
    if not path.is_file():
        return Settings()
    try:
        return load_tables(path, ("alerts", "policy"))
    except (GridError, OSError, ValueError) as exc:
        log(f"alerts and policy: defaults, the grid file does not validate: {exc}")
        return Settings()


class Lookout:
    """Reads a grid's logs every ``interval`` seconds, stops cells the policy names and sends what is new."""

    def __init__(
        self,
        run_dir: Path,
        log: Callable[[str], None],
        interval: float = FOLLOW_SECONDS,
        settings: Settings | None = None,
    ) -> None:
        self.run_dir, self.log, self.interval = run_dir, log, interval
        settings = settings or grid_settings(run_dir, log)
        self.policy = StopPolicy.from_settings(settings.policy)
        self.grid: GridSource = open_path(run_dir)
        self.news = alerts.AlertPolicy(self.grid.name)
        self.news.restore(alerts.read_sent(run_dir))
        table = settings.alerts
        self.dispatcher = alerts.Dispatcher(run_dir, alerts.sinks_from(table), log, table.min_interval)
        for sink in self.dispatcher.sinks:
            log(f"alerts go to {sink.name}")
        self._stopped: set[tuple[str, Any]] = set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> bool:
        """One look: apply the policy, send the news. True once every cell has ended (verdict sent)."""
        self.grid.poll()
        jobs.hand_statuses(self.grid)
        analysis = analyse(self.grid)
        for cell in analysis.cells:
            self.apply_policy(cell)
        news = self.news.news(cell_facts(c) for c in analysis.cells)
        for alert in news:
            self.log(f"alert: {alert.text}")
        self.dispatcher.send(news)
        ended = bool(analysis.cells) and all(c.status.state in jobs.ENDED_STATES for c in analysis.cells)
        if ended:
            verdict = self.news.verdict(analysis.verdict.headline, verdict_evidence(analysis))
            if verdict is not None:
                self.log(f"alert: {verdict.text}")
                self.dispatcher.send([verdict])
        return ended

    def apply_policy(self, cell: CellAnalysis) -> None:
        reason = self.policy.reason(cell)
        run = (cell.source.id, cell.status.record.start_time)
        if reason is None or run in self._stopped:
            return
        self._stopped.add(run)
        self.log(f"policy: stopping {cell.source.id} ({reason}) at step {cell.source.series.last_step}")
        try:
            outcome = jobs.request_stop(self.run_dir, [cell.source.id], reason=reason)
        except jobs.LaunchError as exc:
            self.log(f"policy: could not stop {cell.source.id}: {exc}")
            return
        for line in outcome.refused:  # a job that could not be proven the cell's is never signalled
            self.log(f"policy: {line}")

    # ---- in a thread of the supervisor -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="prefwatch-lookout", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._done.wait(self.interval):
            self._guarded_tick()

    def _guarded_tick(self) -> bool:
        try:
            return self.tick()
        except Exception as exc:  # a bad log line must never take the supervisor down
            self.log(f"lookout: {type(exc).__name__}: {exc}")
            return False

    def finish(self) -> None:
        """The grid is over: a last look (ends and the verdict), recorded in alerts.jsonl. Delivering
        what waits is ``dispatcher.close``'s, which may come after the grid is handed over."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self._guarded_tick()


@contextmanager
def watching(
    run_dir: Path, log: Callable[[str], None], hand_over: Callable[[], None] = lambda: None
) -> Iterator[Lookout | None]:
    """The supervisor's hook: a Lookout in a thread while the block runs, its last look at the end.

    Then the grid is handed over before the last alerts are delivered: alerts.lock is released and
    ``hand_over`` called (the supervisor gives launch.lock up), so that a ``launch --resume`` starts
    the next supervisor at once, which follows the grid and sends its alerts (alerts.jsonl says what
    was sent already), while this one delivers what waits for at most DRAIN_SECONDS. A webhook that
    never answers holds up nothing but this process's exit."""
    lock = hold_alerts_lock(run_dir)
    if lock is None:
        log("lookout: another follower sends this grid's alerts")
        yield None
        return
    try:
        lookout = Lookout(run_dir, log)
    except SourceError as exc:
        log(f"lookout: not started: {exc}")
        lock.close()
        yield None
        return
    lookout.start()
    try:
        yield lookout
    finally:
        lookout.finish()
        lock.close()
        hand_over()
        if lookout.dispatcher.sinks:
            log(f"lookout: the grid is free for a resume; pid {os.getpid()} delivers its last alerts")
        lookout.dispatcher.close()


def hold_alerts_lock(run_dir: Path) -> BinaryIO | None:
    """alerts.lock: one follower per grid sends its alerts and applies its policy (an flock, released
    by the kernel when the holder dies). None when another holds it."""
    return rundir.try_flock(run_dir / rundir.ALERTS_LOCK)


def follow_headless(run_dir: Path, log: Callable[[str], None], interval: float = FOLLOW_SECONDS) -> int:
    """``attach --headless``: look until every cell has ended, sending alerts and applying the policy.

    Where another follower holds alerts.lock (the local supervisor, or another attach), this one only
    prints the alerts it records, so nothing is sent twice. Returns the number of alerts seen."""
    lock = hold_alerts_lock(run_dir)
    if lock is None:
        log("alerts are sent by the grid's supervisor or another follower; showing them")
        return _show_alerts(run_dir, log, interval)
    try:
        lookout = Lookout(run_dir, log, interval)
        try:
            while not lookout._guarded_tick():
                time.sleep(interval)
        finally:
            lock.close()  # what is news is recorded: another follower may take over while the last alerts go
            lookout.dispatcher.close()
        return len(alerts.read_sent(run_dir))
    finally:
        lock.close()


# ``attach --headless`` on logs prefwatch did not launch returns once every cell has ended and no new
# run started for this long: a grid trained run after run into one store leaves a gap between runs.
QUIET_SECONDS = 60.0


def follow_logs(
    path: Path, log: Callable[[str], None], interval: float = FOLLOW_SECONDS, quiet: float = QUIET_SECONDS
) -> int:
    """``attach --headless`` on logs prefwatch did not launch (a tracker's store, a folder of runs):
    say what is news (each finding once, each cell's end, the verdict once every cell has ended),
    following runs that start meanwhile; with nothing there yet, say what it waits for first. Nothing
    is sent and nothing stopped: the jobs are not prefwatch's. Returns the number of alerts said."""
    grid = open_path(path, wait=True)
    if grid.waiting:
        log(grid.waiting)
    news = alerts.AlertPolicy(grid.name)
    said, ended_since = 0, None
    while True:
        grid.poll()
        analysis = analyse(grid)
        for alert in news.news(cell_facts(c) for c in analysis.cells):
            log(f"alert: {alert.text}")
            said += 1
        ended = bool(analysis.cells) and all(c.status.state in jobs.ENDED_STATES for c in analysis.cells)
        if not ended:
            ended_since = None
        elif ended_since is None:
            ended_since = time.monotonic()
            verdict = news.verdict(analysis.verdict.headline, verdict_evidence(analysis))
            if verdict is not None:
                log(f"alert: {verdict.text}")
                said += 1
        elif time.monotonic() - ended_since >= quiet:
            return said
        time.sleep(interval)


def _show_alerts(run_dir: Path, log: Callable[[str], None], interval: float) -> int:
    shown = len(alerts.read_sent(run_dir))  # what came before this attach: sent already
    while True:
        sent = alerts.read_sent(run_dir)
        for alert in sent[shown:]:
            log(f"alert: {alert.text}")
            if alert.kind == alerts.AlertKind.VERDICT:
                return len(sent)
        shown = len(sent)
        statuses = jobs.grid_statuses(run_dir)
        if all(st.state in jobs.ENDED_STATES for st in statuses.values()) and hold_alerts_lock(run_dir):
            return shown  # the sender is gone and every cell has ended
        time.sleep(interval)
