"""A cell's best held-out evaluation: where it was, what it scored, and the adapter kept from it.

The training job keeps the adapter of its best evaluation in ``cells/<id>/best/`` (prefwatch.train.best);
this module finds that evaluation again in the logs, names it in the report, and lets the verdict
compare best evaluations instead of final ones (``report --at best``).

Final is the default: picking each cell's best of many noisy evaluations on the same held-out pairs
that then compare the cells flatters every cell (with 100 pairs accuracy jumps by about 0.1 between
evaluations) and most the cells evaluated most often. Best says what the kept adapters score.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefwatch.core.diagnose import Diagnosis, heldout_accuracy_series, heldout_margin_series
from prefwatch.files import rundir
from prefwatch.ingest.sources import CellSource


class At(enum.StrEnum):
    FINAL = "final"
    BEST = "best"


@dataclass(frozen=True)
class BestEvaluation:
    step: int
    accuracy: float
    index: int | None  # the evaluation's position in the cell's per-pair log (None: not in it)
    pairs_won: int | None
    pairs: int | None
    margin: float | None
    folder: Path | None  # the adapter kept from it, where one is on disk

    def describe(self, root: Path) -> str:
        """best: step 40, held-out accuracy 0.94 (cells/dpo-r16/best/)"""
        if self.folder is None:
            where = "no adapter kept"
        else:
            try:
                where = f"{self.folder.relative_to(root)}/"
            except ValueError:
                where = f"{self.folder}/"
        return f"best: step {self.step}, held-out accuracy {self.accuracy:.2f} ({where})"

    def to_json(self) -> dict[str, object]:
        return {
            "step": self.step,
            "heldout_accuracy": self.accuracy,
            "pairs_won": self.pairs_won,
            "pairs": self.pairs,
            "folder": None if self.folder is None else str(self.folder),
        }


def best_evaluation(source: CellSource) -> BestEvaluation | None:
    """The evaluation whose adapter best/ holds; without one, the first evaluation at the top accuracy
    (the rule the job keeps it by: replaced only when beaten)."""
    steps, accuracy = heldout_accuracy_series(source.series, source.pairs)
    _, margins = heldout_margin_series(source.series, source.pairs)
    kept = rundir.read_best(source.directory)
    finite = np.isfinite(accuracy)
    if kept is not None:
        step = int(kept["step"])
        matches = np.flatnonzero(steps == step)
        index = int(matches[-1]) if len(matches) else None
        won, total = kept.get("pairs_won"), kept.get("pairs")
        return BestEvaluation(
            step,
            float(kept["heldout_accuracy"]),
            index if source.pairs.steps else None,
            won if isinstance(won, int) else None,
            total if isinstance(total, int) else None,
            _at(margins, index),
            Path(kept["path"]),
        )
    if not finite.any():
        return None
    index = int(np.argmax(np.where(finite, accuracy, -np.inf)))
    wins = source.pairs.wins(index) if source.pairs.steps else None
    return BestEvaluation(
        int(steps[index]),
        float(accuracy[index]),
        index if wins is not None else None,
        int(wins.sum()) if wins is not None else None,
        len(wins) if wins is not None else None,
        _at(margins, index),
        None,
    )


def _at(values: np.ndarray, index: int | None) -> float | None:
    if index is None or index >= len(values) or not np.isfinite(values[index]):
        return None
    return float(values[index])


def diagnosis_at(diagnosis: Diagnosis, best: BestEvaluation) -> Diagnosis:
    """The diagnosis with its held-out numbers taken at the best evaluation (what the verdict compares)."""
    won = best.pairs_won
    if won is None and diagnosis.review.heldout_pairs:
        won = round(best.accuracy * diagnosis.review.heldout_pairs)
    review = dataclasses.replace(
        diagnosis.review,
        heldout_accuracy=best.accuracy,
        heldout_pairs_won=won,
        heldout_margin=best.margin if best.margin is not None else diagnosis.review.heldout_margin,
    )
    return Diagnosis(review, diagnosis.findings)


def at_line(at: At) -> str:
    """What the verdict compares, said with it."""
    if at == At.BEST:
        return "compares each cell's best held-out evaluation (the kept adapters; flatters noisy cells)"
    return "compares each cell's final held-out evaluation (report --at best: the kept best adapters)"
