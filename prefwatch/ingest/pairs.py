"""Per-pair held-out rewards at each evaluation, as the job writes them (eval_pairs.jsonl)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prefwatch.core import metrics


@dataclass
class PairLog:
    """Per-pair held-out rewards at each evaluation (eval_pairs.jsonl), as arrays."""

    pair_ids: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    chosen: list[np.ndarray] = field(default_factory=list)
    rejected: list[np.ndarray] = field(default_factory=list)

    def add(self, record: object) -> bool:
        if not isinstance(record, dict):
            return False
        step = metrics.valid_step(record.get("step"))
        if step is None:
            return False
        try:
            chosen = np.asarray(record["chosen"], dtype=float)
            rejected = np.asarray(record["rejected"], dtype=float)
        except (KeyError, TypeError, ValueError, RecursionError):
            return False
        if chosen.shape != rejected.shape or chosen.ndim != 1:
            return False
        if not self.pair_ids:
            self.pair_ids = [str(p) for p in record.get("pair_ids") or range(len(chosen))]
        if len(chosen) != len(self.pair_ids):
            return False
        if self.steps and step < self.steps[-1]:
            keep = int(np.searchsorted(self.steps, step, side="left"))
            del self.steps[keep:], self.chosen[keep:], self.rejected[keep:]
        self.steps.append(int(step))
        self.chosen.append(chosen)
        self.rejected.append(rejected)
        return True

    def wins(self, index: int = -1) -> np.ndarray | None:
        """Which held-out pairs the cell ranked right at an evaluation (ties count as wrong, as TRL does)."""
        if not self.steps:
            return None
        return self.chosen[index] > self.rejected[index]
