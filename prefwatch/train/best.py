"""The adapter at the cell's best held-out evaluation, kept in ``cells/<id>/best/`` (as TRL's
``load_best_model_at_end`` would, without keeping every checkpoint): one extra adapter folder,
replaced only when an evaluation beats it.

The measure is the held-out accuracy from the per-pair rewards (chosen above rejected, ties wrong),
the same numbers eval_pairs.jsonl holds and the report reads. The folder is written beside its
place, then renamed into it: a reader finds the old adapter or the new one, whole, with the
``best.json`` that says which step it is.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefwatch.files import rundir


class BestAdapter:
    def __init__(self, cell_dir: Path) -> None:
        self.cell_dir = cell_dir
        self.folder = cell_dir / rundir.BEST_DIR
        kept = rundir.read_best(cell_dir)  # a resumed cell keeps what it had
        self.accuracy = kept["heldout_accuracy"] if kept else None

    def offer(self, step: int, chosen: Sequence[float], rejected: Sequence[float], model: Any) -> bool:
        """Keep ``model``'s adapter when this evaluation beats the best so far; True when it did."""
        if not chosen or len(chosen) != len(rejected):
            return False
        won = sum(c > r for c, r in zip(chosen, rejected))
        accuracy = won / len(chosen)
        if self.accuracy is not None and accuracy <= self.accuracy:
            return False
        staging = self.cell_dir / f".{rundir.BEST_DIR}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(str(staging))
        record = {
            "step": step,
            "heldout_accuracy": accuracy,
            "pairs_won": won,
            "pairs": len(chosen),
            "time": time.time(),
        }
        rundir.write_json_atomic(staging / rundir.BEST_FILE, record)
        old = self.cell_dir / f".{rundir.BEST_DIR}.{os.getpid()}.old"
        if self.folder.exists():
            os.rename(self.folder, old)
        os.rename(staging, self.folder)
        shutil.rmtree(old, ignore_errors=True)
        self.accuracy = accuracy
        return True
