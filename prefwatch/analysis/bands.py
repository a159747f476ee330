"""Seeds as bands: one line per setting (every factor but the seed: objective, LoRA rank, β, learning
rate, …; prefwatch.core.factors) with its spread across seeds.

With several seeds a chart of every cell is a tangle; what a reader needs is each setting's typical
curve and how far seeds disagree. The band is the minimum to maximum across seeds at each step (with
two or three seeds a standard deviation says little), the line their mean. Steps are the evaluation
steps the seeds share a value at; a step only some seeds reached yet counts those seeds (``count``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from prefwatch.core.factors import HELDOUT, SEED, replicates, setting_key, setting_name, varying

if TYPE_CHECKING:
    from prefwatch.analysis.analyse import CellAnalysis

SPREAD = "min–max across seeds"  # what the band shows, said wherever a band is drawn

T = TypeVar("T")


@dataclass(frozen=True)
class Band:
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray  # seeds with a value at each step

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """The cells of one setting, one per seed; ``name`` says the setting (``dpo r=8 β=0.1``)."""

    name: str
    cells: tuple[T, ...]

    @property
    def label(self) -> str:
        return f"{self.name or 'cells'} ({len(self.cells)} seeds)"


def settings(
    cells: Sequence[T], key: Callable[[T], Hashable], seed: Callable[[T], Any], name: Callable[[T], str]
) -> list[Setting[T]]:
    """Settings with several seeds, in first-seen order: cells of one ``key`` whose seeds differ."""
    return [Setting(name(group[0]), tuple(group)) for group in replicates(cells, key, seed) if len(group) > 1]


def analysed_settings(cells: Sequence[CellAnalysis]) -> list[Setting[CellAnalysis]]:
    """The seeds of an analysis' settings, each named by the factors that vary across its cells."""
    names = varying([c.factors for c in cells], skip={SEED, HELDOUT})
    return settings(
        cells,
        lambda c: setting_key(c.source.id, c.factors),
        lambda c: c.factors.get(SEED),
        lambda c: setting_name(c.factors, names),
    )


def band(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> Band:
    """Mean, min and max across curves at each step any curve has a finite value at (NaN ignored)."""
    steps = np.unique(np.concatenate([np.asarray(s, dtype=float) for s, _ in curves] or [np.empty(0)]))
    table = np.full((len(curves), len(steps)), np.nan)
    for row, (s, v) in enumerate(curves):
        s, v = np.asarray(s, dtype=float), np.asarray(v, dtype=float)
        if len(s):
            table[row, np.searchsorted(steps, s)] = v
    finite = np.isfinite(table)
    count = finite.sum(axis=0)
    keep = count > 0
    table, finite, count, steps = table[:, keep], finite[:, keep], count[keep], steps[keep]
    with np.errstate(invalid="ignore"):
        mean = np.where(finite, table, 0.0).sum(axis=0) / np.maximum(count, 1)
        low = np.where(finite, table, np.inf).min(axis=0) if len(steps) else np.empty(0)
        high = np.where(finite, table, -np.inf).max(axis=0) if len(steps) else np.empty(0)
    return Band(steps, mean, low, high, count)


def seed_finals(
    cells: Sequence[CellAnalysis],
) -> list[tuple[Setting[CellAnalysis], list[tuple[int | None, float | None]]]]:
    """Per setting with several seeds: each seed's final held-out accuracy."""
    return [
        (group, [(c.source.seed, c.diagnosis.review.heldout_accuracy) for c in group.cells])
        for group in analysed_settings(cells)
    ]


def seed_lines(cells: Sequence[CellAnalysis]) -> list[str]:
    """One line per setting with several seeds: its final held-out accuracy, mean and spread."""
    lines = []
    for group, finals in seed_finals(cells):
        values = [v for _, v in finals if v is not None]
        if not values:
            continue
        each = ", ".join(f"seed {seed}: {'–' if v is None else f'{v:.2f}'}" for seed, v in finals)
        lines.append(
            f"{group.label}: held-out accuracy {np.mean(values):.2f}, {SPREAD} {min(values):.2f}–{max(values):.2f} ({each})"
        )
    return lines


def seed_summaries(cells: Sequence[CellAnalysis]) -> list[str]:
    """The same, short, for the monitor's strip: "simpo r=8 (2 seeds) 0.80 [0.78–0.82]"."""
    out = []
    for group, finals in seed_finals(cells):
        values = [v for _, v in finals if v is not None]
        spread = f"{np.mean(values):.2f} [{min(values):.2f}–{max(values):.2f}]" if values else "–"
        out.append(f"{group.label} {spread}")
    return out
