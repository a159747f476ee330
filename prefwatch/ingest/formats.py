"""The one table of the formats a run's log may be in, in the order they are tried.

A folder is a run in the first format whose ``detect`` accepts it: a metrics.jsonl is read before
TensorBoard's event files, and those before trainer_state.json (each the richer log where a run
wrote several). A file is read by the format its name says (trainer_state.json, events.out.tfevents.*);
``open_path`` reads any other file as JSON lines.

Runs in a tracker's store (trackio, MLflow, W&B) are listed by the store (``prefwatch.ingest.trackers``):
a store holds many runs, each read by a ``TrackerRun``.
"""

from __future__ import annotations

from pathlib import Path

from prefwatch.ingest.readers.jsonl import MetricsLog
from prefwatch.ingest.readers.protocol import Format
from prefwatch.ingest.readers.tensorboard import TensorBoardRun
from prefwatch.ingest.readers.trainer_state import TrainerState

FORMATS: tuple[Format, ...] = (MetricsLog, TensorBoardRun, TrainerState)


def format_of(path: Path) -> Format | None:
    """The format of the run at ``path`` (a folder, or a file its name marks), or None."""
    return next((candidate for candidate in FORMATS if candidate.detect(path)), None)
