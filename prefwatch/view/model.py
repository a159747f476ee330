"""What the screen shows, as plain values: built from ``analyse()`` off the UI thread, then handed over.

The widgets never look into series, readers or rules; they draw a ``GridView``. Building views in
the reading thread keeps the UI thread to drawing, and comparing a cell's ``version`` lets the
screen update only the panels whose data or state changed.

Curves hold numpy views of the series' columns, not copies: a reader only ever writes past the end
of what a view covers, so the view stays valid while the next poll appends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from prefwatch.analysis.analyse import CellAnalysis, GridAnalysis
from prefwatch.analysis.bands import seed_summaries
from prefwatch.core import metrics as m
from prefwatch.core.completions import Evaluation
from prefwatch.core.decide import UNKNOWN, Verdict
from prefwatch.core.diagnose import ERROR, WARN, heldout_accuracy_series, heldout_margin_series
from prefwatch.core.factors import HELDOUT, SEED, Factors, label, setting_key, varying
from prefwatch.files.system import machine_lines, system_line
from prefwatch.run import jobs

# The curves of a cell panel, in display order: key, label.
PANEL_CURVES: tuple[tuple[str, str], ...] = (
    ("chosen", "chosen"),
    ("rejected", "rejected"),
    ("margin", "margin"),
    ("heldout_margin", "ho margin"),
    ("heldout_accuracy", "ho acc"),
    ("completion_tokens", "length"),  # mean tokens of the sampled completions, the reference's at step 0
)
# Panel rows whose values have no sign (the rewards' and margins' do).
UNSIGNED_CURVES = frozenset({"heldout_accuracy", "completion_tokens"})
# How many of the last evaluations the completions pane shows beside the reference's answers.
PANE_EVALUATIONS = 3
# The strip's words while a first frame's verdict is still being worked out (GridView.complete False).
PENDING_HEADLINE = "(analysing…)"


NICE_STEPS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten that is >= ``value`` (> 0).

    An axis that ends there changes only when the data crosses the next such bound (every 20-25 %),
    not with every point: a live chart is then mostly unchanged by a new line, and is not repainted.
    """
    if not value > 0 or not np.isfinite(value):
        return 1.0
    scale = 10.0 ** np.floor(np.log10(value))
    return float(next(step * scale for step in NICE_STEPS if step * scale >= value * (1 - 1e-12)))


@dataclass(frozen=True)
class Curve:
    """One metric over steps; ``steps`` ascending, ``values`` may hold NaN (drawn as gaps)."""

    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray | None = None  # wall time of each point (seconds since the epoch), where logged

    @property
    def latest(self) -> float | None:
        """The last value logged, NaN included: a cell that just diverged must show nan, not its last good value."""
        return float(self.values[-1]) if len(self.values) else None

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class FindingView:
    severity: str
    message: str
    step: int | None
    kind: str = ""  # what was found (non_finite, stalled, …): the message's numbers change, the kind does not


@dataclass(frozen=True)
class CompletionsView:
    """What the model writes, for the completions pane: the reference's answers, the last few
    evaluations' (msgspec Structs from the reader, shared, never copied) and the data's lengths."""

    reference: Evaluation | None
    recent: tuple[Evaluation, ...]
    evaluations: int
    chosen_tokens: float | None = None  # mean token length of the held-out chosen answers (data.json)
    rejected_tokens: float | None = None


@dataclass(frozen=True)
class CellView:
    id: str
    directory: Path
    objective: str | None
    rank: int | None
    seed: int | None
    state: str  # queued, running, finished, failed, stopped, lost, stalled
    status: str  # the state as a person reads it: "failed (exit 1)"
    step: int
    max_steps: int | None
    managed: bool
    curves: dict[str, Curve]
    findings: tuple[FindingView, ...]
    read_error: str | None
    records: int
    rejected: int
    version: tuple[Any, ...]  # equal versions draw the same panel
    # Every metric the cell logged, by name, then split ("train", "eval"): the cell screen's picker.
    metrics: dict[str, dict[str, Curve]] = field(default_factory=dict)
    peak_step: int | None = None  # where held-out accuracy peaked (the diagnosis' smoothed peak)
    system: str | None = None  # the job's CPU, memory and GPUs at its last sample, while it runs
    heldout_accuracy: float | None = None  # the last evaluation's (the overview's heat map)
    # Late train margin minus held-out margin: how much of what the cell learned does not carry over.
    margin_gap: float | None = None
    # Every factor read for the cell (objective, rank, β, learning rate, model, …; prefwatch.core.factors)
    # and its setting: the seeds of one setting share it.
    factors: Factors = field(default_factory=Factors)
    setting: tuple[Any, ...] = ()
    completions: CompletionsView | None = None  # what the model writes (completions.jsonl), where sampled

    @property
    def severity(self) -> str | None:
        """error or warn when a finding (or a read error) needs the user's eye; None otherwise."""
        severities = {f.severity for f in self.findings}
        if ERROR in severities or self.read_error:
            return ERROR
        return WARN if WARN in severities else None

    @property
    def reason(self) -> str | None:
        """The one line a panel shows for its colour: the worst finding's message, or the read error."""
        for severity in (ERROR, WARN):
            for finding in self.findings:
                if finding.severity == severity:
                    return finding.message
            if severity == ERROR and self.read_error:
                return self.read_error
        return None

    @property
    def stoppable(self) -> bool:
        return self.managed and self.state not in jobs.ENDED_STATES

    @cached_property
    def x_range(self) -> tuple[float, float]:
        """Steps spanned by the panel's charts: up to max_steps when known, so progress reads as width;
        else up to a round bound past the last step (nice_ceiling), so that the axis, and with it every
        dot of the charts, does not move with each new line (a plain log would repaint every chart).
        Computed once per view: each of a panel's rows asks for it at every refresh."""
        last = max((float(c.steps[-1]) for c in self.curves.values() if len(c)), default=0.0)
        end = max(float(self.max_steps or 0), last)
        if not self.max_steps and end > 0:
            end = nice_ceiling(end)
        return 0.0, end if end > 0 else 1.0


@dataclass(frozen=True)
class GridView:
    name: str
    root: Path
    managed: bool
    cells: list[CellView]
    headline: str
    reason: str | None
    effects: dict[str, str]
    needs: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    ranks: list[Any] = field(default_factory=list)
    machines: list[str] = field(default_factory=list)  # system lines, one per machine running cells
    seeds: list[str] = field(default_factory=list)  # per setting with several seeds: mean [min–max] (bands.py)
    swept: list[str] = field(default_factory=list)  # the factors that vary across the cells, seed left out
    # False: a first frame of each cell's figures, its findings and the verdict still being worked out
    # (prefwatch.analysis.analyse.values_only): no cell's lack of findings means anything yet.
    complete: bool = True

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cell in self.cells:
            counts[cell.state] = counts.get(cell.state, 0) + 1
        return counts

    def cell(self, cell_id: str) -> CellView | None:
        return next((c for c in self.cells if c.id == cell_id), None)


def grid_view(analysis: GridAnalysis, cells: list[CellView] | None = None) -> GridView:
    """The view of a whole analysis; ``cells`` passes cell views built already (one per analysed cell)."""
    verdict = analysis.verdict
    decided = analysis.complete  # an incomplete analysis' verdict is a placeholder: none is shown
    return GridView(
        name=analysis.grid.name,
        root=analysis.grid.root,
        managed=analysis.grid.managed,
        cells=cells if cells is not None else [cell_view(c) for c in analysis.cells],
        headline=verdict.headline if decided else PENDING_HEADLINE,
        reason=verdict.reasons[0] if decided and verdict.reasons else None,
        effects=strip_effects(verdict) if decided else {},
        needs=list(verdict.needs) if decided else [],
        objectives=analysis.grid.objectives,
        ranks=analysis.grid.ranks,
        machines=machine_lines(
            c.source.system.last for c in analysis.cells if c.state == jobs.RUNNING and c.source.system.last
        ),
        seeds=seed_summaries(analysis.cells),
        swept=varying([c.factors for c in analysis.cells], skip={SEED, HELDOUT}),
        complete=analysis.complete,
    )


def strip_effects(verdict: Verdict) -> dict[str, str]:
    """Held-out accuracy by each varying factor, short: the objective's and rank's as the verdict gives
    them, then β, learning rate and the others ("β: 0.1 0.80, 0.5 0.74")."""
    effects = dict(verdict.effects)
    for effect in verdict.factor_effects:
        if effect.factor not in effects:
            effects[label(effect.factor)] = ", ".join(f"{level} {accuracy:.2f}" for level, accuracy, _ in effect.levels)
    return effects


def cell_view(cell: CellAnalysis) -> CellView:
    source = cell.source
    series = source.series
    state = cell.state
    status = "stalled" if state == "stalled" else cell.status.describe()
    findings = tuple(FindingView(f.severity, f.message, f.step, f.kind) for f in cell.diagnosis.findings)
    curves = cell_curves(cell)
    rejected = sum(series.rejected.values())
    system_text = system_line(source.system.last) if state in (jobs.RUNNING, "stalled") else None
    version = (
        series.records,
        series.train.segments,
        len(source.pairs.steps),
        state,
        status,
        source.max_steps,
        findings,
        source.read_error,
        rejected,
        system_text,
        len(source.completions.evaluations),
        source.completions.reference is not None,
    )
    return CellView(
        id=source.id,
        directory=source.directory,
        objective=source.objective,
        rank=source.rank,
        seed=source.seed,
        state=state,
        status=status,
        step=series.last_step,
        max_steps=source.max_steps,
        managed=source.managed,
        curves=curves,
        findings=findings,
        read_error=short_error(source.read_error, source.directory),
        records=series.records,
        rejected=rejected,
        version=version,
        metrics=metric_curves(cell, curves["heldout_accuracy"]),
        peak_step=cell.diagnosis.review.peak_heldout_step,
        system=system_text,
        heldout_accuracy=cell.diagnosis.review.heldout_accuracy,
        margin_gap=margin_gap(cell),
        factors=cell.factors,
        setting=setting_key(source.id, cell.factors),
        completions=completions_view(cell),
    )


def completions_view(cell: CellAnalysis) -> CompletionsView | None:
    log = cell.source.completions
    if log.reference is None and not log.evaluations:
        return None
    lengths = (cell.source.data_stats or {}).get("heldout")
    lengths = lengths if isinstance(lengths, dict) else {}
    chosen, rejected = lengths.get("mean_chosen_tokens"), lengths.get("mean_rejected_tokens")
    return CompletionsView(
        reference=log.reference,
        recent=tuple(log.evaluations[-PANE_EVALUATIONS:]),
        evaluations=len(log.evaluations),
        chosen_tokens=float(chosen) if isinstance(chosen, (int, float)) else None,
        rejected_tokens=float(rejected) if isinstance(rejected, (int, float)) else None,
    )


def margin_gap(cell: CellAnalysis) -> float | None:
    review = cell.diagnosis.review
    if review.train_margin_late is None or review.heldout_margin is None:
        return None
    return review.train_margin_late - review.heldout_margin


def metric_curves(cell: CellAnalysis, accuracy: Curve) -> dict[str, dict[str, Curve]]:
    """Every logged metric as curves (numpy views, no copies), with the held-out accuracy per pair."""
    series = cell.source.series
    result: dict[str, dict[str, Curve]] = {}
    for split in m.SPLITS:
        part = series.split(split)
        for name in part.names:
            result.setdefault(name, {})[split] = Curve(part.steps, part.column(name), part.times)
    if len(accuracy):
        result.setdefault("heldout_accuracy (pairs)", {})["eval"] = accuracy
    for name, curve in completion_curves(cell.source.completions).items():
        result.setdefault(name, {})["eval"] = curve
    return dict(sorted(result.items()))


# The completions' figures the cell screen charts (the reference's at step 0), by the name it lists.
COMPLETION_FIGURES = {
    "completions/mean_tokens": "mean",
    "completions/sd_tokens": "sd",
    "completions/at_max_new_tokens": "at_max",
    "completions/distinct_2": "distinct2",
}


def completion_curves(log: Any) -> dict[str, Curve]:
    """Each completions figure over the evaluations, the reference's first (at step 0)."""
    evaluations = ([log.reference] if log.reference is not None else []) + list(log.evaluations)
    if not evaluations:
        return {}
    steps = np.array([e.step for e in evaluations], dtype=float)
    return {
        name: Curve(steps, np.array([getattr(e.stats, figure) for e in evaluations], dtype=float))
        for name, figure in COMPLETION_FIGURES.items()
    }


def short_error(error: str | None, directory: Path) -> str | None:
    """A read error as a panel can show it: paths inside the cell's folder by file name only,
    so that the reason ("metrics.jsonl: Is a directory") fits a narrow panel."""
    if error is None:
        return None
    prefix = f"{directory}{os.sep}"
    return error.replace(prefix, "") if prefix in error else error


def cell_curves(cell: CellAnalysis) -> dict[str, Curve]:
    series, pairs = cell.source.series, cell.source.pairs
    train, evals = series.train, series.eval
    accuracy_steps, accuracy = heldout_accuracy_series(series, pairs)
    return {
        "chosen": Curve(train.steps, train.column(m.CHOSEN)),
        "rejected": Curve(train.steps, train.column(m.REJECTED)),
        "margin": Curve(train.steps, train.column(m.MARGINS)),
        "heldout_margin": heldout_margin_curve(cell),
        "heldout_accuracy": Curve(np.asarray(accuracy_steps, dtype=float), np.asarray(accuracy, dtype=float)),
        "loss": Curve(train.steps, train.column(m.LOSS)),
        "eval_chosen": Curve(evals.steps, evals.column(m.CHOSEN)),
        "eval_rejected": Curve(evals.steps, evals.column(m.REJECTED)),
        "completion_tokens": completion_curves(cell.source.completions).get(
            "completions/mean_tokens", Curve(np.empty(0), np.empty(0))
        ),
    }


def heldout_margin_curve(cell: CellAnalysis) -> Curve:
    steps, margins = heldout_margin_series(cell.source.series, cell.source.pairs)
    return Curve(np.asarray(steps, dtype=float), np.asarray(margins, dtype=float))


def format_value(value: float | None, signed: bool = True) -> str:
    """A latest value in at most 9 characters, decimals aligned: nan and inf spelled out."""
    if value is None:
        return "–"
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return ("+inf" if signed else "inf") if value > 0 else "-inf"
    sign = "+" if signed else ""
    size = abs(value)
    if value != 0 and (size >= 1e4 or size < 1e-3):
        return f"{value:{sign}.2e}"
    return f"{value:{sign}.1f}" if size >= 100 else f"{value:{sign}.3f}"


def grid_positions(
    cells: list[CellView], objectives: list[str], ranks: list[Any]
) -> tuple[dict[str, tuple[int, int]], int, int]:
    """(row, column) of each cell: objectives as rows, ranks (then seeds) as columns.

    Cells whose labels are unknown, or that collide on a position, take the next free column of
    their row; a set of unlabelled runs is laid out in a near-square block instead of one long row.
    """
    if all(c.objective is None and c.rank is None for c in cells) and len(cells) > 1:
        columns = int(np.ceil(np.sqrt(len(cells))))
        return {c.id: divmod(i, columns) for i, c in enumerate(cells)}, -(-len(cells) // columns), columns
    row_keys = [o if o is not None else UNKNOWN for o in objectives]
    column_keys = sorted({(c.rank, c.seed) for c in cells}, key=lambda k: (_rank_order(k[0], ranks), k[1] or 0))
    taken: set[tuple[int, int]] = set()
    positions = {}
    for cell in cells:
        objective = cell.objective or UNKNOWN
        if objective not in row_keys:
            row_keys.append(objective)
        row = row_keys.index(objective)
        column = column_keys.index((cell.rank, cell.seed))
        while (row, column) in taken:
            column += 1
        taken.add((row, column))
        positions[cell.id] = (row, column)
    used_rows = sorted({r for r, _ in positions.values()})
    compact = {r: i for i, r in enumerate(used_rows)}
    positions = {k: (compact[r], c) for k, (r, c) in positions.items()}
    columns = max(c for _, c in positions.values()) + 1 if positions else 1
    return positions, max(len(used_rows), 1), columns


def _rank_order(rank: Any, ranks: list[Any]) -> int:
    return ranks.index(rank) if rank in ranks else len(ranks)
