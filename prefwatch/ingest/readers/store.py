"""What every tracker reader shares: a poll's batch, a run found in a store, the points a reader
collects (read-only SQLite access is in ``sqlite``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prefwatch.core.metrics import non_finite_text
from prefwatch.files.rundir import CellState
from prefwatch.ingest.readers.tensorboard import Scalars

# Keys a tracker logs beside TRL's metrics that index a row rather than measure anything.
_INDEX_KEYS = frozenset({"train/global_step", "global_step"})


@dataclass(frozen=True)
class RunEnd:
    """A tracker's own word that a run ended: MLflow's run status, W&B's exit record."""

    state: CellState  # FINISHED, FAILED or STOPPED
    exit_code: int | None = None
    said: str = ""  # what the store says, for messages: "MLflow status KILLED"


@dataclass
class StoreBatch:
    """What one poll of a run's store produced: new points, whether the store restarted first
    (what was built from it is void), the run's end-of-training values once the store says it ended,
    and the tracker's own end mark (``ended``) once it has one."""

    scalars: Scalars
    restarted: bool = False
    end: dict[str, float] | None = None
    more: bool = False  # the reader stopped at a size limit: poll again now (memory stays bounded)
    ended: RunEnd | None = None
    # Later segments of one training run (a run resumed under a new tracker run), in order: each
    # with whether this is the first poll that found points in it (what came before did not end).
    after: list[tuple[StoreBatch, bool]] = field(default_factory=list)


class StoreReader(Protocol):
    """A run in a tracker's store, followed by polling."""

    path: Path  # the file or folder named in messages

    @property
    def error(self) -> str | None: ...

    def poll(self) -> StoreBatch: ...

    def watched(self) -> list[Path]: ...

    def fresh(self) -> StoreReader: ...  # a new reader of the same run, from its start


class Points:
    """Scalar points collected row by row, turned into columns once (``scalars``)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.tag_ids: list[int] = []
        self.steps: list[int] = []
        self.walls: list[float] = []
        self.values: list[float] = []
        self.rejected: Counter[str] = Counter()
        self._tags: dict[str, int | None] = {}

    def add_row(self, row: Mapping[str, Any], step: int, wall: float) -> None:
        """One logged dict: its numbers, index keys left out. Booleans and text are not metrics, except
        text that spells NaN or ±Infinity (trackio stores NaN as "NaN"): that is the number it names.

        The inner loop of every tracker reader: a key's tag id (or None: not a metric) is looked up once.
        """
        tags, ids, values = self._tags, self.tag_ids, self.values
        before = len(values)
        for key, value in row.items():
            kind = type(value)
            if kind is str:
                value = non_finite_text(value)
                if value is None:
                    continue
            elif kind is not float and kind is not int:  # bool, dict, None: not a point
                continue
            tag = tags.get(key, -1)
            if tag == -1:
                tag = tags[key] = self._tag_of(key)
            if tag is not None:
                ids.append(tag)
                values.append(float(value))
        added = len(values) - before
        self.steps.extend([step] * added)
        self.walls.extend([wall] * added)

    def _tag_of(self, key: str) -> int | None:
        if key in _INDEX_KEYS or key.startswith("_") or key.startswith("system/"):
            return None
        return self.index.setdefault(key, len(self.index))

    def scalars(self) -> Scalars:
        return Scalars(
            tags=list(self.index),
            tag_ids=np.array(self.tag_ids, dtype=np.int64),
            steps=np.array(self.steps, dtype=np.int64),
            walls=np.array(self.walls, dtype=float),
            values=np.array(self.values, dtype=float),
            rejected=self.rejected,
        )


def without_index_keys(scalars: Scalars) -> Scalars:
    """The points of ``scalars`` that measure something (for stores that log every key alike: MLflow)."""
    drop = [i for i, tag in enumerate(scalars.tags) if tag in _INDEX_KEYS]
    if not drop or not len(scalars):
        return scalars
    keep = ~np.isin(scalars.tag_ids, drop)
    scalars.tag_ids, scalars.steps = scalars.tag_ids[keep], scalars.steps[keep]
    scalars.walls, scalars.values = scalars.walls[keep], scalars.values[keep]
    return scalars


@dataclass
class StoreRun:
    """One run found in a store: its name, labels and settings, and the reader of its points.

    ``key`` names the run within everything a path holds (store file or folder, and the tracker's run
    id); ``group`` is what run names are unique within (a trackio project, an MLflow experiment, a W&B
    folder); ``start`` orders runs of one name (seconds since the epoch; 0 when the store keeps none)."""

    name: str
    reader: StoreReader
    config: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)  # MLflow's run tags (its own mlflow.* left out)
    key: str = ""
    group: str = ""
    start: float = 0.0
    run_id: str = ""  # the tracker's own id: shown only where two runs share a name
    ready: bool = True  # its name and settings are written (W&B writes its run record seconds after the folder)
