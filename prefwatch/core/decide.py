"""The grid's verdict: which objective, which LoRA rank, and whether the evidence decides it.

Rules (from the founding write-up, made precise):
- Objective: switch from DPO to SimPO only if the best SimPO cell wins at least one more held-out
  pair than the best DPO cell AND its margins are cleaner: no over-optimisation or health finding
  that the DPO cell does not share, and a smaller gap between train and held-out margin relative to
  its own scale (DPO and SimPO rewards live on different scales and are never compared directly).
  Otherwise stay with DPO.
  Suggest ORPO when both objectives are unstable.
- Rank: within the chosen objective, prefer the lower rank when it is within RANK_TOLERANCE_PAIRS
  held-out pairs of the higher and has lower train margins; otherwise the rank with more pairs.
- Decisive only when every compared cell finished, the deciding difference is significant in an
  exact sign test on the pairs where the two cells disagree (or the choice rests on cleanliness),
  and, with several seeds, the difference is larger than the spread across seeds.
- Nothing is decided from nothing: cells without preference metrics are not compared; one
  objective at one rank compares nothing; a cell whose label and logs disagree on its objective
  leaves the objective in question. Each says so in the verdict's reasons.

Sweeps as people run them (prefwatch.core.factors):
- One grid: runs of different base models or data sets are never compared; cells are compared pair
  by pair only on the same held-out set (same size, same pair ids where per-pair results exist). The
  verdict names the groups it found and decides within each; across held-out sets it shows
  accuracies only, and says so.
- Other factors (β, learning rate, batch size, …): within the chosen objective and rank, the setting
  with the most held-out pairs (mean over its seeds) is the best; decisive when it beats the next one
  in the sign test and by more than the spread across seeds.
- Each varying factor's effect: the spread of its levels' mean held-out accuracy (β and γ within one
  objective: their scales are the objective's); the factor with the largest effect decides the most.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from prefwatch.core.diagnose import Diagnosis, FindingKind
from prefwatch.core.factors import (
    GRID_BOUND,
    HELDOUT,
    MODEL,
    OBJECTIVE,
    OBJECTIVE_BOUND,
    RANK,
    SEED,
    Factors,
    HeldoutSet,
    Origin,
    Value,
    comparable,
    label,
    level_text,
    replicates,
    setting_key,
    text,
    varying,
)

T = TypeVar("T")
RANK_TOLERANCE_PAIRS = 1
# The group of cells whose objective nothing says (no label, and logs that cannot tell).
UNKNOWN = "unknown-objective"
SIGNIFICANCE = 0.05
UNSTABLE_KINDS = frozenset({"non_finite"})
# Loss spikes that make a cell unstable (a single spike can be one odd batch).
UNSTABLE_SPIKES = 3


@dataclass
class CellResult:
    """What the verdict needs to know of one cell."""

    id: str
    objective: str | None
    rank: int | None
    seed: int | None
    finished: bool
    diagnosis: Diagnosis
    wins: np.ndarray | None = None  # per held-out pair, at the last evaluation
    preference: bool = True  # False: the logs show no preference metrics (GRPO, SFT, loss only)
    stopped_at: int | None = None  # the step an incomplete run stopped at (no end-of-training record)
    max_steps: int | None = None
    # How a cell that did not finish ended, as a person reads it ("failed (exit 1)", "stopped
    # (non_finite)", "lost"); "queued" for one that has not started; None while it runs.
    ended: str | None = None
    factors: Factors = field(default_factory=Factors)  # every setting read for it, objective and rank included
    heldout: HeldoutSet | None = None  # the held-out pairs it was judged on

    @property
    def accuracy(self) -> float | None:
        return self.diagnosis.review.heldout_accuracy

    @property
    def setting(self) -> tuple[Any, ...]:
        """Equal for the seeds of one setting (prefwatch.core.factors.setting_key)."""
        return setting_key(self.id, self._with_labels())

    def _with_labels(self) -> Factors:
        factors = Factors(dict(self.factors.values))
        if self.objective is not None and OBJECTIVE not in factors.values:
            factors.values[OBJECTIVE] = _given(self.objective)
        if self.rank is not None and RANK not in factors.values:
            factors.values[RANK] = _given(self.rank)
        if self.seed is not None and SEED not in factors.values:
            factors.values[SEED] = _given(self.seed)
        return factors

    @property
    def pairs_won(self) -> int | None:
        return self.diagnosis.review.heldout_pairs_won

    @property
    def margin_gap(self) -> float | None:
        """(train margin - held-out margin) / |train margin|: how much of the train margin fails to carry over."""
        r = self.diagnosis.review
        if r.train_margin_late is None or r.heldout_margin is None or abs(r.train_margin_late) < 1e-12:
            return None
        return (r.train_margin_late - r.heldout_margin) / abs(r.train_margin_late)


@dataclass
class Paired:
    """A paired comparison of two cells on the same held-out pairs."""

    winner: str
    other: str
    only_winner: int
    only_other: int
    p_value: float

    def describe(self) -> str:
        return (
            f"{self.winner} vs {self.other}: {self.only_winner} pairs only {self.winner} gets right, "
            f"{self.only_other} only {self.other}; sign test p = {self.p_value:.3g}"
        )


@dataclass
class Effect:
    """How much one factor moves held-out accuracy: its levels' mean accuracy, and the best level's
    minus the worst's (in held-out pairs too: the cells compared share one held-out set)."""

    factor: str
    levels: list[tuple[str, float, int]]  # level, mean held-out accuracy, cells
    size: float
    pairs: float | None = None
    within: str | None = None  # the objective the factor was compared within (β, γ, loss type)
    halves: bool = False  # many numeric levels of one cell each: split at their median

    def describe(self) -> str:
        scope = f" (within {self.within})" if self.within else ""
        pairs = f", {self.pairs:.3g} held-out pairs" if self.pairs is not None else ""
        levels = ", ".join(
            f"{label}: {accuracy:.2f}" + (f" ({n} cells)" if n > 1 else "") for label, accuracy, n in self.levels
        )
        halves = "; halves split at the median" if self.halves else ""
        return f"{label(self.factor)}{scope}: {self.size:.2f} held-out accuracy{pairs} between its levels ({levels}{halves})"

    def to_json(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "within": self.within,
            "size": self.size,
            "pairs": self.pairs,
            "halves": self.halves,
            "levels": [{"level": label, "accuracy": accuracy, "cells": n} for label, accuracy, n in self.levels],
        }


@dataclass
class Verdict:
    objective: str | None
    rank: int | None
    decisive: bool
    reasons: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    comparisons: list[Paired] = field(default_factory=list)
    effects: dict[str, str] = field(default_factory=dict)
    setting: dict[str, str] = field(default_factory=dict)  # the best setting of the other factors (β, lr, …)
    factor_effects: list[Effect] = field(default_factory=list)
    decides: str | None = None  # which factor moves held-out accuracy the most, in words
    groups: list[GroupVerdict] = field(default_factory=list)  # runs that are not one grid, decided apart

    @property
    def headline(self) -> str:
        state = "decisive" if self.decisive else "not decisive"
        if self.groups:
            return f"{len(self.groups)} groups, decided apart ({state})"
        parts = [self.objective, f"r={self.rank}" if self.rank else None]
        parts += [text(name, value) for name, value in self.setting.items()]
        choice = " ".join(x for x in parts if x) or "none"
        return f"{choice} ({state})"

    def to_json(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "rank": self.rank,
            "decisive": self.decisive,
            "reasons": self.reasons,
            "needs": self.needs,
            "comparisons": [vars(c) for c in self.comparisons],
            "effects": self.effects,
            "setting": self.setting,
            "factor_effects": [e.to_json() for e in self.factor_effects],
            "decides": self.decides,
            "groups": [g.to_json() for g in self.groups],
        }


@dataclass
class GroupVerdict:
    """The verdict on one group of cells that are one grid (one base model and data set, one held-out set)."""

    label: str
    cells: list[str]
    verdict: Verdict

    def to_json(self) -> dict[str, Any]:
        return {"group": self.label, "cells": self.cells, **self.verdict.to_json()}


def sign_test(wins_a: int, wins_b: int) -> float:
    """Exact two-sided sign test on discordant pairs (pairs that only one of two cells gets right)."""
    n = wins_a + wins_b
    if n == 0:
        return 1.0
    k = min(wins_a, wins_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(a: CellResult, b: CellResult) -> Paired | None:
    if a.wins is None or b.wins is None or a.wins.shape != b.wins.shape:
        return None
    only_a = int(np.sum(a.wins & ~b.wins))
    only_b = int(np.sum(b.wins & ~a.wins))
    return Paired(a.id, b.id, only_a, only_b, sign_test(only_a, only_b))


def decide(cells: list[CellResult]) -> Verdict:
    """The verdict over the cells that tuned on preferences; the others are named, not compared.
    Cells that are not one grid (other base models, data sets or held-out sets) are decided apart."""
    preference = [c for c in cells if c.preference]
    groups, why = comparable_groups(preference)
    verdict = _decide(preference) if len(groups) < 2 else _decide_apart(groups, why)
    others = [f"{c.id} ({c.objective.upper()})" if c.objective else c.id for c in cells if not c.preference]
    if others:
        verdict.reasons.append(f"not compared (no preference metrics): {', '.join(others)}")
    return verdict


def _decide(cells: list[CellResult]) -> Verdict:
    verdict = Verdict(objective=None, rank=None, decisive=False)
    if not cells:
        verdict.reasons.append("no preference-tuned cell: nothing to compare")
        verdict.needs.append("logs of preference runs (DPO, SimPO, ORPO …) with held-out evaluations")
        return verdict
    scored = [c for c in cells if c.pairs_won is not None]
    if not scored:
        _no_evaluation(cells, verdict)
        _unfinished(cells, verdict)
        return verdict
    by_objective = _group(scored, lambda c: c.objective or UNKNOWN)
    waiting = sorted({c.objective or UNKNOWN for c in cells} - set(by_objective))
    if waiting:
        verdict.reasons.append(f"no held-out evaluation of {', '.join(waiting)} cells yet")
    objective, decisive_objective = _choose_objective(by_objective, verdict)
    verdict.objective = objective if objective != UNKNOWN else None
    rank, rank_cells = _choose_rank(by_objective.get(objective, []), verdict)
    verdict.rank = rank
    swept = swept_factors(by_objective.get(objective, []))
    chosen = [c for c in by_objective.get(objective, []) if rank is None or c.rank == rank]
    decisive_setting = _choose_setting(chosen, swept, verdict)
    compared = len(by_objective) > 1 or len({c.rank for c in rank_cells}) > 1 or bool(swept)
    if objective == UNKNOWN:
        compared = False
        verdict.reasons.insert(
            0, "the objective is unknown (no label, and the logs cannot tell): --label NAME=OBJECTIVE:RANK"
        )
    elif len(by_objective) == 1 and not waiting:
        ranks = f"one rank (r={rank})" if rank is not None else "no known rank"
        verdict.reasons.insert(
            0,
            f"only {objective} cells to compare: the objective is not in question"
            if compared
            else f"one objective ({objective}) and {ranks}: nothing was compared",
        )
    if len(scored) > 1 and all(c.wins is None for c in scored):
        verdict.reasons.append(_accuracy_intervals(scored))
    mismatched = [c.id for c in cells if c.diagnosis.has("objective_mismatch")]
    if mismatched:
        verdict.reasons.append(
            f"the objective of {', '.join(mismatched)} is in question: its label and its logs disagree"
        )
    seeds_ok = _seed_spread_ok(by_objective, objective, verdict)
    unfinished = _unfinished(cells, verdict)  # waiting objectives are unfinished too
    verdict.decisive = (
        decisive_objective and decisive_setting and seeds_ok and compared and not (unfinished or mismatched)
    )
    if not verdict.decisive and not verdict.needs:
        verdict.needs.append("more held-out pairs, more seeds or more steps")
    verdict.effects = main_effects(scored)
    _length_note(scored, verdict)
    verdict.factor_effects = factor_effects(scored, objective)
    verdict.decides = deciding_factor(verdict.factor_effects, seed_spread(scored))
    return verdict


def _unfinished(cells: list[CellResult], verdict: Verdict) -> bool:
    """Say which cells are still running, which wait to start, which ended before their last step
    (failed, stopped or lost: named as such) and which logs stopped early; True if any."""
    unfinished = [c for c in cells if not c.finished and c.stopped_at is None]
    running = [c.id for c in unfinished if c.ended is None]
    queued = [c.id for c in unfinished if c.ended == "queued"]
    ended = [f"{c.id} {c.ended}" for c in unfinished if c.ended not in (None, "queued")]
    stopped = [c for c in cells if not c.finished and c.stopped_at is not None]
    if running:
        verdict.needs.append(f"the cells still running to finish ({', '.join(running)})")
    if queued:
        verdict.needs.append(f"the queued cells to run ({', '.join(queued)})")
    if ended:
        verdict.needs.append(f"the cells that ended early run again to their last step ({'; '.join(ended)})")
    if stopped:
        where = ", ".join(
            f"{c.id} stopped at step {c.stopped_at}" + (f" of {c.max_steps}" if c.max_steps else "") for c in stopped
        )
        verdict.needs.append(f"complete runs ({where}, without an end-of-training record)")
    return bool(unfinished or stopped)


def _no_evaluation(cells: list[CellResult], verdict: Verdict) -> None:
    """Say exactly what is missing: held-out accuracy without its size, or no evaluation at all."""
    unsized = [c.id for c in cells if c.diagnosis.review.heldout_accuracy is not None]
    if unsized:
        verdict.reasons.append(
            f"held-out size unknown: --heldout-pairs N (accuracy is logged for {', '.join(unsized)}; "
            "pairs won cannot be counted without the size)"
        )
        verdict.needs.append("the held-out size (--heldout-pairs N) or per-pair results (eval_pairs.jsonl)")
        return
    verdict.reasons.append("no held-out evaluation yet")
    verdict.needs.append("evaluations on held-out pairs (eval_every in a grid; eval_strategy in TRL)")


def _accuracy_intervals(cells: list[CellResult]) -> str:
    """Without per-pair results, accuracies are compared with their 95 % intervals over the held-out size."""
    parts = []
    for c in cells:
        r = c.diagnosis.review
        if r.heldout_accuracy is None or not r.heldout_pairs:
            continue
        half = 1.96 * math.sqrt(max(r.heldout_accuracy * (1 - r.heldout_accuracy), 0.0) / r.heldout_pairs)
        parts.append(f"{c.id} {r.heldout_accuracy:.2f} ± {half:.2f}")
    n = ", ".join(sorted({str(c.diagnosis.review.heldout_pairs) for c in cells if c.diagnosis.review.heldout_pairs}))
    return f"no per-pair results: held-out accuracy with 95 % intervals over {n} pairs: {', '.join(parts)}"


def _group(cells: Sequence[T], key: Callable[[T], Any]) -> dict[Any, list[T]]:
    groups: dict[Any, list[T]] = {}
    for cell in cells:
        groups.setdefault(key(cell), []).append(cell)
    return groups


def _best(cells: list[CellResult]) -> CellResult:
    """Most held-out pairs won; ties go to the cleaner cell, then the lower rank."""
    return max(cells, key=lambda c: (c.pairs_won or 0, c.diagnosis.clean, -(c.rank or 0)))


def _unstable(cells: list[CellResult]) -> bool:
    """Every cell of an objective diverged: non-finite values or repeated loss spikes."""
    return bool(cells) and all(
        c.diagnosis.has(*UNSTABLE_KINDS) or c.diagnosis.review.loss_spikes >= UNSTABLE_SPIKES for c in cells
    )


def _choose_objective(by_objective: dict[str, list[CellResult]], verdict: Verdict) -> tuple[str, bool]:
    dpo, simpo = by_objective.get("dpo"), by_objective.get("simpo")
    if not (dpo and simpo):
        only = next(iter(by_objective))
        if len(by_objective) > 1:
            verdict.reasons.append(f"{' and '.join(by_objective)}: the rules compare DPO with SimPO only")
            return only, False
        return only, True
    if _unstable(dpo) and _unstable(simpo):
        verdict.reasons.append(
            "both DPO and SimPO are unstable (non-finite values or loss spikes): try ORPO, or lower the learning rate"
        )
        return "orpo", False
    best_dpo, best_simpo = _best(dpo), _best(simpo)
    more = (best_simpo.pairs_won or 0) - (best_dpo.pairs_won or 0)
    comparison = paired(best_simpo, best_dpo) if more >= 0 else paired(best_dpo, best_simpo)
    if comparison:
        verdict.comparisons.append(comparison)
    cleaner, why = _cleaner(best_simpo, best_dpo)
    significant = comparison is not None and comparison.p_value < SIGNIFICANCE
    if more >= 1 and cleaner:
        verdict.reasons.append(
            f"switch to SimPO: {best_simpo.id} wins {more} more held-out pair(s) than {best_dpo.id} with {why}"
        )
        return "simpo", significant
    if more >= 1:
        verdict.reasons.append(
            f"stay with DPO: {best_simpo.id} wins {more} more held-out pair(s) than {best_dpo.id} but {why}"
        )
        return "dpo", True
    verdict.reasons.append(
        f"stay with DPO: {best_simpo.id} does not win more held-out pairs than {best_dpo.id} "
        f"({best_simpo.pairs_won} vs {best_dpo.pairs_won})"
    )
    return "dpo", significant


def _troubles(cell: CellResult) -> set[str]:
    return {f.kind for f in cell.diagnosis.findings if f.severity != "info"}


def _cleaner(candidate: CellResult, incumbent: CellResult) -> tuple[bool, str]:
    """Cleaner margins: no over-optimisation or health finding that the incumbent does not share, and a
    smaller train/held-out margin gap relative to its own scale. (A finding both cells show cannot
    tell them apart; the gap then does.)"""
    extra = _troubles(candidate) - _troubles(incumbent)
    if extra:
        return False, f"it shows {', '.join(sorted(extra))} and {incumbent.id} does not"
    drift = _length_drift_only(incumbent, candidate)
    if drift is not None:
        return True, drift
    gap_c, gap_i = candidate.margin_gap, incumbent.margin_gap
    if gap_c is not None and gap_i is not None and gap_c >= gap_i:
        return False, (f"its train/held-out margin gap is not smaller ({gap_c:.0%} of its train margin vs {gap_i:.0%})")
    if gap_c is None or gap_i is None:
        return True, "cleaner margins"
    return True, f"cleaner margins (train/held-out gap {gap_c:.0%} of its train margin vs {gap_i:.0%})"


LENGTH_DRIFT = FindingKind.LENGTH_DRIFT


def _length_drift_only(drifted: CellResult, other: CellResult) -> str | None:
    """Why ``other`` is cleaner when ``drifted`` won its pairs with a length drift and ``other`` shows
    none: completions that grew or shrank against the reference say the pairs were won by length,
    whatever the margins say (the finding's own words are the evidence). None otherwise."""
    if not drifted.diagnosis.has(LENGTH_DRIFT) or other.diagnosis.has(LENGTH_DRIFT):
        return None
    finding = next(f for f in drifted.diagnosis.findings if f.kind == LENGTH_DRIFT)
    return f"no length drift, where {drifted.id}'s {finding.message.split(': ', 1)[-1]}"


def _length_note(cells: list[CellResult], verdict: Verdict) -> None:
    """The chosen setting's cells that won their pairs with a length drift: the verdict says so, with
    the finding's numbers (a choice made on pairs that length may have won)."""
    for cell in cells:
        if cell.objective == verdict.objective and cell.rank == verdict.rank and cell.diagnosis.has(LENGTH_DRIFT):
            finding = next(f for f in cell.diagnosis.findings if f.kind == LENGTH_DRIFT)
            verdict.reasons.append(f"beware: {cell.id}'s {finding.message.split(': ', 1)[-1]}")


def _choose_rank(cells: list[CellResult], verdict: Verdict) -> tuple[int | None, list[CellResult]]:
    ranked = [c for c in cells if c.rank is not None]
    by_rank = _group(ranked, lambda c: c.rank)
    if len(by_rank) < 2:
        return (next(iter(by_rank)) if by_rank else None), ranked
    best = {rank: _best(group) for rank, group in by_rank.items()}
    top = max(best.values(), key=lambda c: (c.pairs_won or 0, -(c.rank or 0)))
    choice = top
    for rank in sorted(best):
        low = best[rank]
        if rank >= top.rank:  # type: ignore[operator]
            break
        close = (top.pairs_won or 0) - (low.pairs_won or 0) <= RANK_TOLERANCE_PAIRS
        calmer = _lower_margin(low, top)
        if close and calmer:
            verdict.reasons.append(
                f"prefer r={rank}: within {RANK_TOLERANCE_PAIRS} held-out pair of r={top.rank} "
                f"({low.pairs_won} vs {top.pairs_won}) with lower train margins"
            )
            choice = low
            break
    if choice is top:
        verdict.reasons.append(f"r={top.rank} wins the most held-out pairs ({top.pairs_won})")
    return choice.rank, ranked


def _lower_margin(low: CellResult, high: CellResult) -> bool:
    a, b = low.diagnosis.review.train_margin_late, high.diagnosis.review.train_margin_late
    return a is not None and b is not None and a < b


def _seed_spread_ok(by_objective: dict[str, list[CellResult]], objective: str, verdict: Verdict) -> bool:
    """With several seeds per setting, a difference inside the spread across seeds decides nothing."""
    spreads = []
    for cells in by_objective.values():
        for group in seeds_of(cells):
            won = [c.pairs_won for c in group if c.pairs_won is not None]
            if len(won) > 1:
                spreads.append(max(won) - min(won))
    if not spreads:
        return True
    means = {
        name: float(np.mean([c.pairs_won for c in cells if c.pairs_won is not None]))
        for name, cells in by_objective.items()
    }
    others = [v for k, v in means.items() if k != objective]
    if not others:
        return True
    difference = means[objective] - max(others)
    spread = max(spreads)
    if difference <= spread:
        verdict.reasons.append(
            f"the objective difference ({difference:.1f} pairs on average) is inside the spread across seeds "
            f"({spread} pairs)"
        )
        return False
    return True


def main_effects(cells: list[CellResult]) -> dict[str, str]:
    """Mean held-out accuracy per level of each factor: the main effect of objective and of rank."""
    effects = {}
    for factor, key in (("objective", lambda c: c.objective), ("rank", lambda c: c.rank)):
        levels = _group([c for c in cells if key(c) is not None], key)
        if len(levels) < 2:
            continue
        parts = []
        for level, group in levels.items():
            accuracy = [c.diagnosis.review.heldout_accuracy for c in group]
            values = [a for a in accuracy if a is not None]
            if values:
                label = f"r={level}" if factor == "rank" else str(level)
                parts.append(f"{label} {np.mean(values):.2f}")
        effects[factor] = ", ".join(parts)
    return effects


# ---- sweeps: one grid or several, the other factors' best setting, each factor's effect -------------


def seeds_of(cells: list[CellResult]) -> list[list[CellResult]]:
    """The cells by setting: a list holds one setting's seeds (or one cell)."""
    return replicates(cells, lambda c: c.setting, lambda c: c._with_labels().get(SEED))


def _given(value: Any) -> Value:
    return Value(value, Origin.CELL)


@dataclass
class Group:
    """Cells that are one grid: one base model and data set (as far as known), one held-out set."""

    label: str
    cells: list[CellResult]
    grid: tuple[Any, ...] = ()  # the grid-bound factors' values (model, data) that set it apart
    heldout: HeldoutSet | None = None


def comparable_groups(cells: list[CellResult]) -> tuple[list[Group], list[str]]:
    """The cells split into groups that can be compared as one grid, and why they were split.

    Two cells are apart when both name a base model (or data set) and the names differ; a cell that
    names none joins the one model its group names, or a group of its own when several are named.
    Within one model, scored cells are apart when their held-out sets differ; cells not yet evaluated
    join the largest held-out set."""
    why: list[str] = []
    parts: list[tuple[tuple[Any, ...], list[CellResult]]] = [((), cells)]
    for name in GRID_BOUND:
        split: list[tuple[tuple[Any, ...], list[CellResult]]] = []
        for key, members in parts:
            for value, group in _split_by(members, name):
                split.append(((*key, (name, value)), group))
        if len(split) > len(parts):
            counts = ", ".join(f"{_value_label(dict(key).get(name))} ({_count(group)})" for key, group in split)
            why.append(f"different {_GRID_WORDS[name]}: {counts}")
            parts = split
    groups: list[Group] = []
    heldout_split = []
    for key, members in parts:
        sets = _split_by_heldout(members)
        if len(sets) > 1:
            heldout_split.append(", ".join(f"{h.size} pairs ({_count(g)})" for h, g in sets if h is not None))
        for heldout, group in sets:
            groups.append(Group(_group_label(key, heldout if len(sets) > 1 else None), group, key, heldout))
    if heldout_split:
        why.append(f"different held-out sets: {'; '.join(heldout_split)}")
    return groups, why


_GRID_WORDS = {MODEL: "base models", "data": "data sets"}


def _count(cells: list[CellResult]) -> str:
    return f"{len(cells)} cell" + ("s" if len(cells) != 1 else "")


def _value_label(value: Any) -> str:
    return "unknown" if value is None else str(value)


def _group_label(key: tuple[Any, ...], heldout: HeldoutSet | None) -> str:
    parts = [f"{name} {_value_label(value)}" for name, value in key]
    if heldout is not None:
        parts.append(heldout.label)
    return ", ".join(parts) or "all cells"


def _split_by(cells: list[CellResult], name: str) -> list[tuple[Any, list[CellResult]]]:
    """Cells by their value of a grid-bound factor; unknown joins the one known value, if only one."""
    known: dict[Any, tuple[Any, list[CellResult]]] = {}
    unknown: list[CellResult] = []
    for cell in cells:
        value = comparable(cell.factors, name)
        if value is None:
            unknown.append(cell)
        else:
            known.setdefault(value, (cell.factors.get(name), []))[1].append(cell)
    if len(known) < 2:
        shown = next(iter(known.values()))[0] if known else None
        return [(shown, cells)]
    split = list(known.values())
    return [*split, (None, unknown)] if unknown else split


def _split_by_heldout(cells: list[CellResult]) -> list[tuple[HeldoutSet | None, list[CellResult]]]:
    sets: list[tuple[HeldoutSet, list[CellResult]]] = []
    waiting: list[CellResult] = []
    for cell in cells:
        heldout = cell.heldout if cell.pairs_won is not None else None
        if heldout is None or heldout.size is None:
            waiting.append(cell)
            continue
        match = next((members for known, members in sets if known.same_as(heldout)), None)
        if match is None:
            sets.append((heldout, [cell]))
        else:
            match.append(cell)
    if len(sets) < 2:
        return [(sets[0][0] if sets else None, cells)]
    max(sets, key=lambda s: len(s[1]))[1].extend(waiting)
    return [(heldout, sorted(group, key=cells.index)) for heldout, group in sets]


def _decide_apart(groups: list[Group], why: list[str]) -> Verdict:
    """Cells that are not one grid: each group decided on its own; across held-out sets of one model,
    accuracies only."""
    verdict = Verdict(objective=None, rank=None, decisive=False)
    verdict.reasons.append(
        f"not one grid ({'; '.join(why)}): each group is decided on its own; no pair counts are compared across groups"
    )
    for group in groups:
        verdict.groups.append(GroupVerdict(group.label, [c.id for c in group.cells], _decide(group.cells)))
    across = _across_heldout_sets(groups)
    if across:
        verdict.reasons.append(across)
    verdict.needs.append(
        "runs of one base model and data set, judged on the same held-out pairs, to decide as one grid"
    )
    return verdict


def _across_heldout_sets(groups: list[Group]) -> str | None:
    """Groups of one model on different held-out sets: only their held-out accuracies, side by side."""
    by_grid = _group(groups, lambda g: g.grid)
    lines = []
    for members in by_grid.values():
        if len(members) < 2:
            continue
        best = []
        for group in members:
            accurate = [c for c in group.cells if c.accuracy is not None]
            if accurate and group.heldout is not None:
                top = max(accurate, key=lambda c: c.accuracy or 0.0)
                best.append(f"{top.id} {top.accuracy:.2f} on {group.heldout.size} pairs")
        if len(best) > 1:
            lines.append(", ".join(best))
    if not lines:
        return None
    return (
        "across different held-out sets only held-out accuracies are compared (pair counts are not): best "
        + "; ".join(lines)
    )


def swept_factors(cells: list[CellResult]) -> list[str]:
    """The factors other than objective, rank and seed that vary among these cells (one objective's)."""
    founding = {OBJECTIVE, RANK, SEED, HELDOUT, *GRID_BOUND}
    return varying([c.factors for c in cells], skip=founding)


def _mean_pairs(cells: list[CellResult]) -> float:
    return float(np.mean([c.pairs_won or 0 for c in cells]))


def _describe(cells: list[CellResult], names: list[str]) -> str:
    return " ".join(text(name, cells[0].factors.get(name)) for name in names)


def _choose_setting(cells: list[CellResult], names: list[str], verdict: Verdict) -> bool:
    """The best setting of the other swept factors (β, learning rate, …) within the chosen objective
    and rank: the most held-out pairs, as the mean over its seeds. True when it decides: it beats the
    next setting in the sign test and by more than the spread across seeds (or nothing else varies)."""
    if not names:
        return True
    by_setting = _group(cells, lambda c: tuple(comparable(c.factors, n) for n in names))
    if len(by_setting) < 2:
        return True
    ranked = sorted(by_setting.values(), key=lambda g: (-_mean_pairs(g), not all(c.diagnosis.clean for c in g)))
    best, runner = ranked[0], ranked[1]
    top, next_ = _mean_pairs(best), _mean_pairs(runner)
    size = best[0].diagnosis.review.heldout_pairs
    of = f" of {size}" if size else ""
    factors = ", ".join(label(n) for n in names)
    if top <= next_:
        if all(_mean_pairs(g) == top for g in ranked):
            verdict.reasons.append(
                f"no setting of {factors} wins more held-out pairs than another ({top:g}{of} in each of {len(ranked)})"
            )
        else:
            verdict.reasons.append(
                f"{_describe(best, names)} and {_describe(runner, names)} tie at {top:g}{of} held-out pairs"
            )
        return False
    verdict.setting = {name: level_text(name, best[0].factors.get(name)) for name in names}
    seeds = f" (mean of {len(best)} seeds)" if len(best) > 1 else ""
    verdict.reasons.append(
        f"best setting of {factors}: {_describe(best, names)} wins {top:g}{of} held-out pairs{seeds}, "
        f"the next, {_describe(runner, names)}, {next_:g}"
    )
    comparison = paired(_best(best), _best(runner))
    if comparison:
        verdict.comparisons.append(comparison)
    spreads = [max(g) - min(g) for g in ([c.pairs_won or 0 for c in grp] for grp in seeds_of(cells)) if len(g) > 1]
    if spreads and top - next_ <= max(spreads):
        verdict.reasons.append(
            f"the setting difference ({top - next_:.1f} pairs on average) is inside the spread across seeds "
            f"({max(spreads)} pairs)"
        )
        return False
    return comparison is not None and comparison.p_value < SIGNIFICANCE


# A numeric factor with more levels than this, at fewer than two cells a level, is read in halves: a
# level of one run says nothing a random search could not, and its extremes would pass for an effect.
MAX_LEVELS = 3


def factor_effects(cells: list[CellResult], objective: str | None) -> list[Effect]:
    """Each varying factor's effect on held-out accuracy: the objective over every cell, β, γ and the
    loss type within the chosen objective (their scales are its own), any other factor over every cell."""
    effects = []
    names = varying([c.factors for c in cells], skip={SEED, HELDOUT, *GRID_BOUND})
    for name in names:
        within = objective if name in OBJECTIVE_BOUND else None
        pool = [c for c in cells if c.accuracy is not None and (within is None or c.objective == within)]
        effect = _effect(name, pool, within)
        if effect is not None:
            effects.append(effect)
    return effects


def _effect(name: str, cells: list[CellResult], within: str | None) -> Effect | None:
    values = {id(c): c.factors.get(name) for c in cells}
    known = [c for c in cells if values[id(c)] is not None]
    levels = _group(known, lambda c: comparable(c.factors, name))
    if len(levels) < 2:
        return None
    halves = False
    numbers = [v for v in (values[id(c)] for c in known) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(levels) > MAX_LEVELS and len(numbers) == len(known) and len(known) < 2 * len(levels):
        median = float(np.median(numbers))
        low = [c for c in known if float(values[id(c)]) <= median]  # type: ignore[arg-type]
        high = [c for c in known if float(values[id(c)]) > median]  # type: ignore[arg-type]
        if not (low and high):
            return None
        shown = f"{median:g}"
        named = {f"≤ {shown}": low, f"> {shown}": high}
        halves = True
    else:
        named = {level_text(name, group[0].factors.get(name)): group for group in levels.values()}
    rows = [(label, float(np.mean([c.accuracy or 0.0 for c in group])), len(group)) for label, group in named.items()]
    size = max(r[1] for r in rows) - min(r[1] for r in rows)
    pairs = None
    if all(c.pairs_won is not None for c in known) and len({c.diagnosis.review.heldout_pairs for c in known}) == 1:
        means = [_mean_pairs(group) for group in named.values()]
        pairs = max(means) - min(means)
    return Effect(name, rows, size, pairs, within, halves)


def seed_spread(cells: list[CellResult]) -> float | None:
    """The largest spread of held-out accuracy across the seeds of one setting (None without seeds)."""
    spreads = []
    for group in seeds_of(cells):
        values = [c.accuracy for c in group if c.accuracy is not None]
        if len(values) > 1:
            spreads.append(max(values) - min(values))
    return max(spreads) if spreads else None


def deciding_factor(effects: list[Effect], spread: float | None) -> str | None:
    """Which factor moves held-out accuracy the most, in words, against the spread across seeds."""
    if not effects:
        return None
    ranked = sorted(effects, key=lambda e: -e.size)
    top = ranked[0]
    if top.size <= 0:
        return f"no factor changes held-out accuracy ({', '.join(label(e.factor) for e in ranked)}: 0.00 each)"
    then = "".join(f", then {label(e.factor)} ({e.size:.2f})" for e in ranked[1:])
    line = f"{label(top.factor)} decides the most ({top.size:.2f} held-out accuracy between its levels){then}"
    if spread is not None and top.size <= spread:
        line += f"; but no effect is larger than the spread across seeds ({spread:.2f})"
    return line
