"""The verdict pinned against values worked out by hand, one crafted grid per branch of the rules in
prefwatch/core/decide.py, read from real run directories through ``prefwatch report --format json``.

Each case's expected objective, rank, ``decisive``, reasons, needs and exit status were written from
the rules (the comment above each case) before the test was first run. Numbers used by the rules:
- a cell's margin gap is (late train margin - held-out margin) / |late train margin|;
- the crafted cells rank the first ``won`` held-out pairs right (see tests/crafted.py), so two cells
  with 60 and 80 pairs disagree on exactly 20 pairs, all won by the second: sign test
  p = 2 / 2**20 = 1.9e-6; with 1 and 0 discordant pairs p = 1.0; with 15 and 0, p = 6.1e-5.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from crafted import Cell, live_process, write_grid
from helpers import prefwatch

from prefwatch.cli import main

GENERIC_NEED = "more held-out pairs, more seeds or more steps"
ORPO = "both DPO and SimPO are unstable (non-finite values or loss spikes): try ORPO, or lower the learning rate"


def dpo(rank: int, won: int, **kw: Any) -> Cell:
    """A DPO cell with a train margin of 1.0 and a held-out margin of 0.5 (gap 50 %) unless told."""
    return Cell(f"dpo-r{rank}" + kw.pop("suffix", ""), "dpo", rank, won, **kw)


def simpo(rank: int, won: int, **kw: Any) -> Cell:
    """A SimPO cell with a train margin of 2.0 and a held-out margin of 1.5 (gap 25 %) unless told."""
    kw.setdefault("train_margin", 2.0)
    kw.setdefault("heldout_margin", 1.5)
    return Cell(f"simpo-r{rank}" + kw.pop("suffix", ""), "simpo", rank, won, **kw)


@dataclass
class Expected:
    objective: str | None
    rank: int | None
    decisive: bool
    reasons: list[str]
    needs: list[str] = field(default_factory=list)
    exit: int = 0
    # (winner, other, only_winner, only_other, p-value rounded to 2 significant digits)
    comparisons: list[tuple[str, str, int, int, float]] = field(default_factory=list)
    effects: dict[str, str] | None = None  # None: not pinned


CASES: dict[str, tuple[list[Cell], Expected]] = {
    # best DPO: dpo-r8 (60; ties go to the lower rank), best SimPO: simpo-r8 (80). 20 more pairs, no
    # findings on either side, gap 25 % < 50 %: switch, significant (p = 1.9e-6). Rank within SimPO: 80 = 80,
    # the tie goes to r=8 and nothing lower exists. One seed per setting, all finished: decisive, exit 0.
    # Effects: mean held-out accuracy dpo (0.60 + 0.60) / 2, simpo 0.80; r=8 (0.60 + 0.80) / 2 = 0.70, r=16 the same.
    "switch to SimPO": (
        [dpo(8, 60), dpo(16, 60), simpo(8, 80), simpo(16, 80)],
        Expected(
            "simpo",
            8,
            True,
            [
                "switch to SimPO: simpo-r8 wins 20 more held-out pair(s) than dpo-r8 with cleaner margins "
                "(train/held-out gap 25% of its train margin vs 50%)",
                "r=8 wins the most held-out pairs (80)",
            ],
            comparisons=[("simpo-r8", "dpo-r8", 20, 0, 1.9e-6)],
            effects={"objective": "dpo 0.60, simpo 0.80", "rank": "r=8 0.70, r=16 0.70"},
        ),
    ),
    # One more pair and cleaner margins: the rule says switch, but 1 discordant pair against 0 gives
    # p = 1.0: not decisive, exit 3, and nothing else is missing, so the generic need. One rank: no rank reason.
    "switch to SimPO on one pair, not significant": (
        [dpo(8, 60), simpo(8, 61)],
        Expected(
            "simpo",
            8,
            False,
            [
                "switch to SimPO: simpo-r8 wins 1 more held-out pair(s) than dpo-r8 with cleaner margins "
                "(train/held-out gap 25% of its train margin vs 50%)"
            ],
            [GENERIC_NEED],
            3,
            comparisons=[("simpo-r8", "dpo-r8", 1, 0, 1.0)],
        ),
    ),
    # SimPO wins 20 more, but its gap is (2.0 - 0.5) / 2.0 = 75 % against DPO's 50 %: not cleaner, stay with
    # DPO. Staying rests on cleanliness: decisive, exit 0.
    "stay with DPO: SimPO's margin gap is not smaller": (
        [dpo(8, 60), simpo(8, 80, heldout_margin=0.5)],
        Expected(
            "dpo",
            8,
            True,
            [
                "stay with DPO: simpo-r8 wins 20 more held-out pair(s) than dpo-r8 but its train/held-out margin "
                "gap is not smaller (75% of its train margin vs 50%)"
            ],
            comparisons=[("simpo-r8", "dpo-r8", 20, 0, 1.9e-6)],
            effects={"objective": "dpo 0.60, simpo 0.80"},
        ),
    ),
    # SimPO wins 20 more with the smaller gap, but its held-out accuracy peaks at step 30 (80 + 10 = 90
    # pairs) and falls back while its train margin doubles: an over-optimisation warning that DPO does
    # not show. Not cleaner: stay with DPO, decisive, exit 0.
    "stay with DPO: SimPO over-optimises": (
        [dpo(8, 60), simpo(8, 80, peaked=True)],
        Expected(
            "dpo",
            8,
            True,
            [
                "stay with DPO: simpo-r8 wins 20 more held-out pair(s) than dpo-r8 but it shows overoptimization "
                "and dpo-r8 does not"
            ],
            comparisons=[("simpo-r8", "dpo-r8", 20, 0, 1.9e-6)],
        ),
    ),
    # Both over-optimise: a finding both share cannot tell them apart; the gap (25 % < 50 %) does: switch.
    "a finding both share does not block the switch": (
        [dpo(8, 60, peaked=True), simpo(8, 80, peaked=True)],
        Expected(
            "simpo",
            8,
            True,
            [
                "switch to SimPO: simpo-r8 wins 20 more held-out pair(s) than dpo-r8 with cleaner margins "
                "(train/held-out gap 25% of its train margin vs 50%)"
            ],
            comparisons=[("simpo-r8", "dpo-r8", 20, 0, 1.9e-6)],
        ),
    ),
    # Equal pairs (60 vs 60): SimPO does not win at least one more pair; stay with DPO. The paired comparison
    # has no discordant pair (p = 1.0): not significant, not decisive, exit 3.
    "stay with DPO: SimPO wins no more pairs": (
        [dpo(8, 60), simpo(8, 60)],
        Expected(
            "dpo",
            8,
            False,
            ["stay with DPO: simpo-r8 does not win more held-out pairs than dpo-r8 (60 vs 60)"],
            [GENERIC_NEED],
            3,
            comparisons=[("simpo-r8", "dpo-r8", 0, 0, 1.0)],
        ),
    ),
    # DPO wins 20 more (80 vs 60): stay with DPO, significant (DPO's 20 pairs against 0), decisive, exit 0.
    "stay with DPO: DPO wins clearly": (
        [dpo(8, 80), simpo(8, 60)],
        Expected(
            "dpo",
            8,
            True,
            ["stay with DPO: simpo-r8 does not win more held-out pairs than dpo-r8 (60 vs 80)"],
            comparisons=[("dpo-r8", "simpo-r8", 20, 0, 1.9e-6)],
        ),
    ),
    # DPO (72 at r=16) beats SimPO (50) by 22 pairs: stay, significant. Rank within DPO: r=16 has 72, r=8 has
    # 71, within RANK_TOLERANCE_PAIRS = 1, and r=8's late train margin 0.5 < 1.0: prefer r=8. Decisive, exit 0.
    "lower rank within tolerance with lower train margins": (
        [dpo(8, 71, train_margin=0.5, heldout_margin=0.25), dpo(16, 72), simpo(8, 50), simpo(16, 50)],
        Expected(
            "dpo",
            8,
            True,
            [
                "stay with DPO: simpo-r8 does not win more held-out pairs than dpo-r16 (50 vs 72)",
                "prefer r=8: within 1 held-out pair of r=16 (71 vs 72) with lower train margins",
            ],
            comparisons=[("dpo-r16", "simpo-r8", 22, 0, 4.8e-7)],
        ),
    ),
    # The same, but r=8's train margin is 1.5 > 1.0: not calmer, so the rank with more pairs, r=16.
    "lower rank within tolerance with higher train margins": (
        [dpo(8, 71, train_margin=1.5, heldout_margin=0.75), dpo(16, 72), simpo(8, 50), simpo(16, 50)],
        Expected(
            "dpo",
            16,
            True,
            [
                "stay with DPO: simpo-r8 does not win more held-out pairs than dpo-r16 (50 vs 72)",
                "r=16 wins the most held-out pairs (72)",
            ],
            comparisons=[("dpo-r16", "simpo-r8", 22, 0, 4.8e-7)],
        ),
    ),
    # r=8 is calmer but 2 pairs behind (70 vs 72), outside the tolerance of 1: r=16.
    "lower rank outside the tolerance": (
        [dpo(8, 70, train_margin=0.5, heldout_margin=0.25), dpo(16, 72), simpo(8, 50), simpo(16, 50)],
        Expected(
            "dpo",
            16,
            True,
            [
                "stay with DPO: simpo-r8 does not win more held-out pairs than dpo-r16 (50 vs 72)",
                "r=16 wins the most held-out pairs (72)",
            ],
            comparisons=[("dpo-r16", "simpo-r8", 22, 0, 4.8e-7)],
        ),
    ),
    # Two seeds per setting. Best DPO: seed 1 (80), best SimPO: seed 0 (95): 15 more, gap 25 % < 50 %,
    # p = 2 / 2**15 = 6.1e-5: switch. But the means are 70 (DPO) and 82.5 (SimPO): a difference of 12.5,
    # inside the spread across seeds (DPO 80 - 60 = 20, SimPO 95 - 70 = 25; the larger, 25). Not decisive, exit 3.
    "seed spread swallows the difference": (
        [
            dpo(8, 60, seed=0, suffix="-s0"),
            dpo(8, 80, seed=1, suffix="-s1"),
            simpo(8, 95, seed=0, suffix="-s0"),
            simpo(8, 70, seed=1, suffix="-s1"),
        ],
        Expected(
            "simpo",
            8,
            False,
            [
                "switch to SimPO: simpo-r8-s0 wins 15 more held-out pair(s) than dpo-r8-s1 with cleaner margins "
                "(train/held-out gap 25% of its train margin vs 50%)",
                "the objective difference (12.5 pairs on average) is inside the spread across seeds (25 pairs)",
            ],
            [GENERIC_NEED],
            3,
            comparisons=[("simpo-r8-s0", "dpo-r8-s1", 15, 0, 6.1e-5)],
        ),
    ),
    # Seeds that agree: DPO 60 / 62 (mean 61), SimPO 90 / 88 (mean 89): difference 28 > spread 2. Switch on
    # 90 vs 62 (28 discordant pairs, p = 7.5e-9): decisive, exit 0.
    "seeds that agree decide": (
        [
            dpo(8, 60, seed=0, suffix="-s0"),
            dpo(8, 62, seed=1, suffix="-s1"),
            simpo(8, 90, seed=0, suffix="-s0"),
            simpo(8, 88, seed=1, suffix="-s1"),
        ],
        Expected(
            "simpo",
            8,
            True,
            [
                "switch to SimPO: simpo-r8-s0 wins 28 more held-out pair(s) than dpo-r8-s1 with cleaner margins "
                "(train/held-out gap 25% of its train margin vs 50%)",
            ],
            comparisons=[("simpo-r8-s0", "dpo-r8-s1", 28, 0, 7.5e-9)],
        ),
    ),
    # Neither cell has a held-out evaluation (no eval rows, no eval_pairs.jsonl): no objective, no rank,
    # the one reason and the one need the rule gives, exit 3.
    "no held-out evaluation": (
        [dpo(8, 60, evaluations=False), simpo(8, 60, evaluations=False)],
        Expected(
            None,
            None,
            False,
            ["no held-out evaluation yet"],
            ["evaluations on held-out pairs (eval_every in a grid; eval_strategy in TRL)"],
            3,
            effects={},
        ),
    ),
    # Both objectives have NaN train loss and margins from step 60 (an error finding each): unstable, so
    # ORPO is suggested; no rank (no ORPO cell), not decisive, exit 3. No comparison is made.
    "both unstable: try ORPO (non-finite)": (
        [dpo(8, 60, nan_from=60), simpo(8, 70, nan_from=60)],
        Expected("orpo", None, False, [ORPO], [GENERIC_NEED], 3),
    ),
    # Three loss spikes (50 against a loss near 0.5) in every cell: unstable by UNSTABLE_SPIKES = 3.
    "both unstable: try ORPO (loss spikes)": (
        [dpo(8, 60, spikes=(45, 65, 85)), simpo(8, 70, spikes=(45, 65, 85))],
        Expected("orpo", None, False, [ORPO], [GENERIC_NEED], 3),
    ),
    # Two spikes are not enough, and one unstable objective is not both: the ordinary rule (SimPO 70 vs
    # DPO 60, gap 25 % vs 50 %; 10 discordant pairs, p = 2 / 1024 = 0.002) switches to SimPO.
    "two spikes, or one unstable objective, are not ORPO": (
        [dpo(8, 60, nan_from=60), simpo(8, 70, spikes=(45, 65))],
        Expected(
            "simpo",
            8,
            True,
            [
                "switch to SimPO: simpo-r8 wins 10 more held-out pair(s) than dpo-r8 with cleaner margins "
                "(train/held-out gap 25% of its train margin vs 50%)"
            ],
            comparisons=[("simpo-r8", "dpo-r8", 10, 0, 0.002)],
        ),
    ),
}


def report_json(run_dir: Path) -> tuple[int, dict[str, Any]]:
    """``prefwatch report --format json`` in this process (so mutation testing sees it): status and JSON."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["report", str(run_dir), "--format", "json"])
    return code, json.loads(out.getvalue())


def check(verdict: dict[str, Any], code: int, expected: Expected) -> None:
    got = {k: verdict[k] for k in ("objective", "rank", "decisive", "reasons", "needs")}
    want = {
        "objective": expected.objective,
        "rank": expected.rank,
        "decisive": expected.decisive,
        "reasons": expected.reasons,
        "needs": expected.needs,
    }
    assert got == want
    assert code == expected.exit
    comparisons = [
        (c["winner"], c["other"], c["only_winner"], c["only_other"], float(f"{c['p_value']:.2g}"))
        for c in verdict["comparisons"]
    ]
    assert comparisons == expected.comparisons
    if expected.effects is not None:
        assert verdict["effects"] == expected.effects


@pytest.mark.parametrize("name", list(CASES))
def test_pinned_verdict(name: str, tmp_path: Path) -> None:
    cells, expected = CASES[name]
    code, report = report_json(write_grid(tmp_path, "pinned", cells))
    check(report["verdict"], code, expected)


@pytest.mark.parametrize(
    "name", ["switch to SimPO", "stay with DPO: SimPO wins no more pairs", "no held-out evaluation"]
)
def test_pinned_verdict_as_a_process(name: str, tmp_path: Path) -> None:
    """The exit status the shell sees (0 and 3), from a real ``prefwatch report`` process."""
    cells, expected = CASES[name]
    result = prefwatch("report", str(write_grid(tmp_path, "pinned", cells)), "--format", "json")
    assert result.stderr == ""
    check(json.loads(result.stdout)["verdict"], result.returncode, expected)


def test_unfinished_cell_keeps_it_open(tmp_path: Path) -> None:
    """The first case with simpo-r16 still running (a live process is its job): the same choice and
    reasons, but not decisive until it finishes; the need names it; exit 3."""
    cells, expected = CASES["switch to SimPO"]
    with live_process() as pid:
        running = [*cells[:3], simpo(16, 80, state="running", pid=pid)]
        code, report = report_json(write_grid(tmp_path, "pinned", running))
        states = {c["id"]: c["state"] for c in report["cells"]}
    assert states["simpo-r16"] == "running"
    check(
        report["verdict"],
        code,
        Expected(
            expected.objective,
            expected.rank,
            False,
            expected.reasons,
            ["the cells still running to finish (simpo-r16)"],
            3,
            expected.comparisons,
        ),
    )


def test_failed_cell_is_not_a_finished_one(tmp_path: Path) -> None:
    """A failed cell never finished: the verdict stays open and names it (exit 3)."""
    cells, _ = CASES["switch to SimPO"]
    failed = [*cells[:3], simpo(16, 80, state="failed")]
    code, report = report_json(write_grid(tmp_path, "pinned", failed))
    assert (report["verdict"]["objective"], report["verdict"]["rank"], report["verdict"]["decisive"], code) == (
        "simpo",
        8,
        False,
        3,
    )
    assert any("simpo-r16" in need for need in report["verdict"]["needs"])


def test_an_objective_waiting_for_its_first_evaluation(tmp_path: Path) -> None:
    """SimPO's cell runs and has no evaluation yet: the reason says so and replaces "only dpo cells to
    compare"; the DPO rank is chosen among DPO cells; not decisive while SimPO runs (exit 3)."""
    with live_process() as pid:
        cells = [dpo(8, 60), dpo(16, 64), simpo(8, 0, evaluations=False, state="running", pid=pid)]
        code, report = report_json(write_grid(tmp_path, "pinned", cells))
    check(
        report["verdict"],
        code,
        Expected(
            "dpo",
            16,
            False,
            ["no held-out evaluation of simpo cells yet", "r=16 wins the most held-out pairs (64)"],
            ["the cells still running to finish (simpo-r8)"],
            3,
        ),
    )


def test_a_single_objective_is_not_in_question(tmp_path: Path) -> None:
    """Only DPO cells: the objective is not in question (decisive); the rank rule still applies."""
    code, report = report_json(write_grid(tmp_path, "pinned", [dpo(8, 60), dpo(16, 70)]))
    check(
        report["verdict"],
        code,
        Expected(
            "dpo",
            16,
            True,
            ["only dpo cells to compare: the objective is not in question", "r=16 wins the most held-out pairs (70)"],
            effects={"rank": "r=8 0.60, r=16 0.70"},
        ),
    )
