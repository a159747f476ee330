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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefwatch.core.diagnose import Diagnosis, FindingKind

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
class Verdict:
    objective: str | None
    rank: int | None
    decisive: bool
    reasons: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    comparisons: list[Paired] = field(default_factory=list)
    effects: dict[str, str] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        choice = " ".join(x for x in (self.objective, f"r={self.rank}" if self.rank else None) if x) or "none"
        state = "decisive" if self.decisive else "not decisive"
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
        }


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
    """The verdict over the cells that tuned on preferences; the others are named, not compared."""
    verdict = _decide([c for c in cells if c.preference])
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
    compared = len(by_objective) > 1 or len({c.rank for c in rank_cells}) > 1
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
    verdict.decisive = decisive_objective and seeds_ok and compared and not (unfinished or mismatched)
    if not verdict.decisive and not verdict.needs:
        verdict.needs.append("more held-out pairs, more seeds or more steps")
    verdict.effects = main_effects(scored)
    _length_note(scored, verdict)
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


def _group(cells: list[CellResult], key: Any) -> dict[Any, list[CellResult]]:
    groups: dict[Any, list[CellResult]] = {}
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
        for group in _group(cells, lambda c: c.rank).values():
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
