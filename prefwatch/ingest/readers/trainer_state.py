"""TRL's (the Trainer's) trainer_state.json: its ``log_history``, read again whenever the file changes.

The Trainer writes it at each checkpoint, in the output folder's newest ``checkpoint-N/`` (and at its
root when training ends); only the history not seen yet is added. Its ``max_steps`` and recorded
settings are the run's plan and factors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.factors import Factors
from prefwatch.core.series import CellSeries
from prefwatch.files import safe
from prefwatch.ingest.factors import trainer_state_factors
from prefwatch.ingest.readers.protocol import Batch, CompletionsReader
from prefwatch.ingest.tail import decode_line

TRAINER_STATE = "trainer_state.json"


class TrainerState:
    """The newest trainer_state.json of an output folder. With ``history=False`` (the metrics come
    from elsewhere: TensorBoard's event files) only the plan and the settings are taken."""

    @staticmethod
    def detect(path: Path) -> bool:
        """An output folder with a trainer_state.json (at its root or in a checkpoint), or the file."""
        return newest_trainer_state(path) is not None if path.is_dir() else path.name == TRAINER_STATE

    @classmethod
    def open(cls, path: Path, clock: Clock = SYSTEM) -> TrainerState:  # nothing it reads waits on time
        return cls(path if path.is_dir() else path.parent)

    def __init__(self, folder: Path, history: bool = True) -> None:
        self.folder = folder
        self.history = history
        self.series = CellSeries()
        self._seen: tuple[Path, int, int] | None = None
        self._used = 0  # entries of log_history already in the series
        self._planned = False  # max_steps was handed to the cell (the first one read stays, with history)

    @property
    def path(self) -> Path:
        return self.folder

    def watched(self) -> list[Path]:
        return []

    def completions(self) -> CompletionsReader | None:
        return None

    def preview(self, max_bytes: int) -> CellSeries | None:
        return None

    def written_at(self) -> float | None:
        log = newest_trainer_state(self.folder)
        try:
            return log.stat().st_mtime if log is not None else None
        except OSError:
            return None

    def poll(self) -> Batch:
        """Re-read the newest trainer_state.json when it changed; add only history not yet seen."""
        batch = Batch(self.series)
        path = newest_trainer_state(self.folder)
        if path is None:
            return batch
        try:
            stat = path.stat()
            seen = (path, stat.st_mtime_ns, stat.st_size)
            if seen == self._seen:
                return batch
            state = decode_line(safe.read_bytes(path))
        except OSError:
            return batch
        if isinstance(state, dict):
            batch.factors = Factors()
            trainer_state_factors(state, batch.factors)
        max_steps = state.get("max_steps") if isinstance(state, dict) else None
        if not self.history:
            self._seen = seen
            batch.max_steps = max_steps if isinstance(max_steps, int) else None
            return batch
        if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
            self.series.rejected["trainer_state without log_history"] += 1
            return batch
        log_history = state["log_history"]
        self._seen = seen
        if len(log_history) < self._used:
            self.series, self._used = CellSeries(), 0
        self.series.add_all(log_history[self._used :])
        self._used = len(log_history)
        step = state.get("global_step")
        if isinstance(max_steps, int) and not self._planned:
            batch.max_steps, self._planned = max_steps, True
        if isinstance(step, int) and (isinstance(max_steps, int) and 0 < max_steps <= step or _stopped(state)):
            # Checkpoints are saved before the Trainer appends its end-of-training record; a run
            # that stopped early on purpose (early stopping) says so in should_training_stop.
            self.series.end_record = self.series.end_record or {"global_step": step}
        batch.series, batch.changed = self.series, True
        return batch


def newest_trainer_state(path: Path) -> Path | None:
    """The root trainer_state.json, else the one in the highest-numbered checkpoint-N folder."""
    root = path / TRAINER_STATE
    if root.is_file():
        return root
    best, best_step = None, -1
    for candidate in path.glob(f"checkpoint-*/{TRAINER_STATE}"):
        match = re.fullmatch(r"checkpoint-(\d+)", candidate.parent.name)
        if match and int(match.group(1)) > best_step:
            best, best_step = candidate, int(match.group(1))
    return best


def _stopped(state: dict[str, Any]) -> bool:
    """The Trainer's own word that training ended (TrainerControl.should_training_stop, 4.39+)."""
    control = (state.get("stateful_callbacks") or {}).get("TrainerControl") or {}
    return bool(isinstance(control, dict) and (control.get("args") or {}).get("should_training_stop") is True)
