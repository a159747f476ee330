"""One pass from what was read to what it means: each cell's status and diagnosis, and the verdict.

The monitor and the report both call ``analyse``; neither re-implements a rule.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from prefwatch.analysis.peak import At, BestEvaluation, best_evaluation, diagnosis_at
from prefwatch.core.decide import CellResult, Verdict, decide
from prefwatch.core.diagnose import DEFAULT, WARN, Diagnosis, Finding, FindingKind, Thresholds, diagnose, review
from prefwatch.core.factors import HELDOUT, LOSS_TYPE, OBJECTIVE, RANK, Factors, HeldoutSet, Origin, pair_ids_digest
from prefwatch.core.objectives import PREFERENCE
from prefwatch.files.rundir import CellState, CellStatus
from prefwatch.files.system import gpu_warnings
from prefwatch.ingest.factors import heldout_size
from prefwatch.ingest.sources import INCOMPLETE, CellSource, GridSource


@dataclass
class CellAnalysis:
    source: CellSource
    status: CellStatus
    diagnosis: Diagnosis
    best: BestEvaluation | None = None  # the best held-out evaluation and its kept adapter (prefwatch.analysis.peak)

    @property
    def state(self) -> str:
        if self.status.state == CellState.RUNNING and self.diagnosis.has("stalled"):
            return "stalled"
        return self.status.state

    @cached_property
    def factors(self) -> Factors:
        """What tells this run from the others: the factors its files and name give, its objective (from
        the logs where they tell, else its label) and the size of its held-out set."""
        source, review = self.source, self.diagnosis.review
        factors = Factors(dict(source.factors.values))
        if source.objective is not None:
            factors.put(OBJECTIVE, source.objective, _origin(objective_source(source)))
        factors.add(LOSS_TYPE, source.inference.loss_type, Origin.LOGS)  # where a record names none
        if source.rank is not None and RANK not in factors.values:
            factors.put(RANK, source.rank, _origin(source.claim.rank_source if source.claim else None))
        if review.heldout_pairs:
            factors.add(HELDOUT, review.heldout_pairs, Origin.EVALUATIONS, review.heldout_pairs_source)
        return factors

    @property
    def heldout(self) -> HeldoutSet | None:
        """The held-out set the cell was judged on (None before its first evaluation)."""
        size = heldout_size(self.factors)
        if size is None:
            return None
        pairs = self.source.pairs
        return HeldoutSet(size, pair_ids_digest(pairs.pair_ids) if pairs.steps else None)

    def to_json(self) -> dict[str, Any]:
        source = self.source
        claim = source.claim
        return {
            "id": source.id,
            "objective": source.objective,
            "rank": source.rank,
            "seed": source.seed,
            "objective_source": objective_source(source),
            "rank_source": claim.rank_source if claim else None,
            "label": {"objective": claim.objective, "source": claim.objective_source, "note": claim.note}
            if claim
            else None,
            "logs": {
                "objective": source.inference.objective,
                "preference": source.inference.preference,
                "says": source.inference.words,
                "evidence": source.inference.evidence,
                "trainer": source.inference.trainer,
                "loss_type": source.inference.loss_type,
                "reward": source.inference.reward.value if source.inference.reward else None,
            },
            "factors": {
                name: {"value": v.value, "from": str(v.origin), "detail": v.detail}
                for name, v in self.factors.values.items()
            },
            "state": self.state,
            "status": self.status.describe(),
            "step": source.series.last_step,
            "max_steps": source.max_steps,
            "review": self.diagnosis.review.to_json(),
            "best": None if self.best is None else self.best.to_json(),
            "findings": [f.to_json() for f in self.diagnosis.findings],
            "data": source.data_stats,
            "completions": completions_json(source),
            "ingest": {
                "records": source.series.records,
                "rejected": sum(source.series.rejected.values()),
                "rejected_by_reason": dict(source.series.rejected),
                "segments": source.series.train.segments,
                "error": source.read_error,
            },
        }


@dataclass
class GridAnalysis:
    grid: GridSource
    cells: list[CellAnalysis]
    verdict: Verdict
    at: At = At.FINAL  # which evaluation of each cell the verdict compares
    # False: each cell's figures only (``values_only``): no findings, no best evaluation, no verdict yet.
    complete: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": self.grid.name,
            "path": str(self.grid.root),
            "cells": [c.to_json() for c in self.cells],
            "verdict": {**self.verdict.to_json(), "at": str(self.at)},
        }


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for one pass over every cell (reading and analysing a
    thousand cells makes some million short-lived objects, and the collector's passes over them were
    a tenth of a thousand-cell report's CPU). Reference counting still frees all that holds no
    cycle; the collector is on again after the pass, as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def analyse(
    grid: GridSource,
    now: float | None = None,
    heldout_pairs: int | None = None,
    thresholds: Thresholds = DEFAULT,
    at: At = At.FINAL,
) -> GridAnalysis:
    now = time.time() if now is None else now
    cells = []
    for source in grid.cells:
        status = source.status()  # a launched cell's was handed in by the jobs layer
        diagnosis = diagnose(
            source.series,
            source.pairs,
            source.data_stats,
            source.objective,
            heldout_pairs,
            now=now,
            alive=status.state == CellState.RUNNING,
            t=thresholds,
            claim=source.claim,
            inference=source.inference,
            completions=source.completions,
        )
        running = status.state == CellState.RUNNING
        diagnosis.findings += [
            Finding(FindingKind(w.kind), WARN, w.message) for w in gpu_warnings(source.system, running)
        ]
        cells.append(CellAnalysis(source, status, diagnosis, best_evaluation(source)))
    return GridAnalysis(grid, cells, decide([cell_result(c, at) for c in cells]), at)


def values_only(grid: GridSource, thresholds: Thresholds = DEFAULT) -> GridAnalysis:
    """Each cell's status and figures (its review: held-out accuracy, margins, the peak) without the
    findings, the best evaluation or the verdict: the monitor's first frame of a large grid, drawn
    while ``analyse`` runs (the figures are a fifth of its cost). Marked incomplete (``complete``):
    its empty findings say nothing yet, and its verdict is a placeholder that decides nothing."""
    cells = [
        CellAnalysis(
            source,
            source.status(),
            Diagnosis(review(source.series, source.pairs, None, source.data_stats, thresholds)),
        )
        for source in grid.cells
    ]
    return GridAnalysis(grid, cells, Verdict(None, None, False), complete=False)


def cell_result(cell: CellAnalysis, at: At = At.FINAL) -> CellResult:
    """What the verdict needs of an analysed cell: its final evaluation, or (at best) its best one."""
    diagnosis, wins = cell.diagnosis, cell.source.pairs.wins()
    if at == At.BEST and cell.best is not None:
        diagnosis = diagnosis_at(diagnosis, cell.best)
        wins = cell.source.pairs.wins(cell.best.index) if cell.best.index is not None else None
    return CellResult(
        cell.source.id,
        cell.source.objective,
        cell.source.rank,
        cell.source.seed,
        finished=cell.status.state == CellState.FINISHED,
        diagnosis=diagnosis,
        wins=wins,
        preference=cell.source.inference.preference is not False or cell.source.objective in PREFERENCE,
        stopped_at=cell.source.stopped_at if cell.status.state == INCOMPLETE else None,
        max_steps=cell.source.max_steps,
        ended=ended_as(cell),
        factors=cell.factors,
        heldout=cell.heldout,
    )


def ended_as(cell: CellAnalysis) -> str | None:
    """What the verdict says of a cell that did not finish: how it ended, "queued", or None (running)."""
    state = cell.status.state
    if state in (CellState.FAILED, CellState.STOPPED, CellState.LOST):
        return cell.status.describe()
    return "queued" if state == CellState.QUEUED else None


def completions_json(source: CellSource) -> dict[str, Any] | None:
    """The sampled completions' figures (completions.jsonl): the reference's and the last evaluation's."""
    log = source.completions
    if log.reference is None and not log.evaluations:
        return None

    def figures(evaluation: Any) -> dict[str, Any] | None:
        if evaluation is None:
            return None
        stats = evaluation.stats
        numbers = {
            "mean_tokens": stats.mean,
            "sd_tokens": stats.sd,
            "at_max": stats.at_max,
            "distinct_2": stats.distinct2,
        }
        return {"step": evaluation.step, **{k: v if v == v else None for k, v in numbers.items()}}

    return {
        "evaluations": len(log.evaluations),
        "reference": figures(log.reference),
        "last": figures(log.evaluations[-1] if log.evaluations else None),
    }


def objective_source(source: CellSource) -> str | None:
    """Where the cell's objective was read: "logs", or the label's source when the logs cannot tell."""
    if source.inference.objective is not None:
        return "logs"
    return source.claim.objective_source if source.claim and source.objective is not None else None


def _origin(source: str | None) -> Origin:
    """A claim's source as an Origin ("checkpoint-30/adapter_config.json" is the adapter config)."""
    if source is None:
        return Origin.LOGS
    if source.endswith("adapter_config.json"):
        return Origin.ADAPTER_CONFIG
    try:
        return Origin(source)
    except ValueError:
        return Origin.LOGS


def best_lines(cells: Iterable[CellAnalysis], root: Path) -> list[str]:
    """One line per cell that was evaluated: "dpo-r16: best: step 40, held-out accuracy 0.94 (cells/dpo-r16/best/)"."""
    return [f"{cell.source.id}: {cell.best.describe(root)}" for cell in cells if cell.best is not None]
