"""The live grid's incremental analysis equals a full analysis, whatever the logs did in between.

Hypothesis draws sequences of what jobs do to their files (train lines with NaN now and then,
evaluations, per-pair results, a resumed job whose steps go back, an end record, data.json, a log
truncated and written again); after each, the incremental result (only changed cells analysed
again) must equal ``analyse()`` of the same files read from scratch, at the same clock.
No screen: the incremental layer is core code.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefwatch.analysis.analyse import analyse
from prefwatch.analysis.incremental import IncrementalAnalysis
from prefwatch.core.clock import FakeClock
from prefwatch.files import rundir
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.sources import DATA_SECONDS
from prefwatch.ingest.tail import REOPEN_SECONDS

CELLS = ("dpo-r8", "simpo-r16")

operation = st.one_of(
    st.tuples(st.just("train"), st.sampled_from(CELLS), st.integers(1, 30), st.booleans()),
    st.tuples(st.just("eval"), st.sampled_from(CELLS), st.floats(0.0, 1.0), st.just(False)),
    st.tuples(st.just("pairs"), st.sampled_from(CELLS), st.integers(0, 8), st.just(False)),
    st.tuples(st.just("resume"), st.sampled_from(CELLS), st.integers(1, 20), st.just(False)),
    st.tuples(st.just("end"), st.sampled_from(CELLS), st.just(0), st.just(False)),
    st.tuples(st.just("data"), st.sampled_from(CELLS), st.floats(0.0, 1.0), st.just(False)),
    st.tuples(st.just("truncate"), st.sampled_from(CELLS), st.just(0), st.just(False)),
)


def append(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")  # NaN is written as the NaN token, as Python's json does


class Jobs:
    """Writes what a cell's job would, and remembers each cell's step."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.steps = dict.fromkeys(CELLS, 0)
        self.data_seen = dict.fromkeys(CELLS, False)
        for cell in CELLS:
            (root / cell).mkdir(parents=True)
            (root / cell / rundir.METRICS_FILE).write_text("")

    def apply(self, kind: str, cell: str, amount: float, flag: bool) -> None:
        folder = self.root / cell
        metrics = folder / rundir.METRICS_FILE
        now = time.time()
        step = self.steps[cell]
        if kind == "train":
            records = []
            for offset in range(1, int(amount) + 1):
                s = step + offset
                loss = math.nan if flag and offset == 1 else max(0.01, math.log(2) - 0.01 * s)
                margin = 0.05 * s + 0.3 * math.sin(s)
                records.append(
                    {
                        "loss": loss,
                        "rewards/chosen": margin / 2,
                        "rewards/rejected": -margin / 2,
                        "rewards/margins": margin,
                        "rewards/accuracies": min(1.0, 0.5 + 0.02 * s),
                        "logps/chosen": -50.0 - 0.5 * s + 3 * math.sin(3 * s),
                        "logps/rejected": -55.0 - 0.7 * s,
                        "step": s,
                        "time": now,
                    }
                )
            append(metrics, records)
            self.steps[cell] = step + int(amount)
        elif kind == "eval":
            append(
                metrics,
                [{"eval_rewards/accuracies": amount, "eval_rewards/margins": amount - 0.5, "step": step, "time": now}],
            )
        elif kind == "pairs":
            chosen = [1.0 if i < amount else -1.0 for i in range(8)]
            append(folder / rundir.EVAL_PAIRS_FILE, [{"step": step, "chosen": chosen, "rejected": [0.0] * 8}])
        elif kind == "resume":
            self.steps[cell] = max(0, step - int(amount))
        elif kind == "end":
            append(metrics, [{"train_runtime": 12.0, "train_loss": 0.3, "step": step}])
        elif kind == "data":
            if (folder / rundir.DATA_FILE).exists():
                return  # the job writes data.json once, at its start (the reader reads it once)
            stats = {"train": {"chosen_shorter_share": amount, "mean_chosen_tokens": 10, "mean_rejected_tokens": 12}}
            rundir.write_json_atomic(folder / rundir.DATA_FILE, stats)
        elif kind == "truncate":
            metrics.write_text("")
            self.steps[cell] = 0


def apply_and_settle(jobs: Jobs, kind: str, cell: str, amount: float, flag: bool, clock: FakeClock) -> None:
    """Do what a job would, then move the readers' clock past what they wait for before they can see it."""
    jobs.apply(kind, cell, amount, flag)
    if kind == "truncate":
        # A reader trusts an unchanged stat for REOPEN_SECONDS; a truncation to the same size needs a fresh open.
        clock.advance(REOPEN_SECONDS + 0.01)
    if kind == "data" and not jobs.data_seen[cell]:
        jobs.data_seen[cell] = True
        clock.advance(DATA_SECONDS + 0.01)  # data.json is looked for at most once a second


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=10))
def test_incremental_equals_full_analysis(tmp_path_factory, operations):
    root = tmp_path_factory.mktemp("grid")
    jobs = Jobs(root)
    clock = FakeClock()  # its time() is "now" for both analyses
    incremental = IncrementalAnalysis(open_path(root, clock=clock), heartbeat=float("inf"), clock=clock)
    incremental.update()
    for kind, cell, amount, flag in operations:
        apply_and_settle(jobs, kind, cell, amount, flag, clock)
        result = incremental.update() or incremental.last
        fresh = open_path(root, clock=clock)
        fresh.poll()
        expected = analyse(fresh, now=clock.time())
        assert result is not None
        assert result.to_json() == expected.to_json(), f"after {kind} on {cell}"


def test_only_the_changed_cell_is_analysed_again(tmp_path):
    jobs = Jobs(tmp_path)
    jobs.apply("train", "dpo-r8", 5, False)
    jobs.apply("train", "simpo-r16", 5, False)
    incremental = IncrementalAnalysis(open_path(tmp_path), heartbeat=float("inf"))
    incremental.update()
    assert incremental.update() is None  # nothing changed: no new analysis
    before = incremental.analysed
    jobs.apply("train", "simpo-r16", 1, False)
    assert incremental.update() is not None
    assert incremental.analysed - before == 1
    assert incremental.changed == {"simpo-r16"}


def test_with_a_findings_age_train_rows_wait_but_a_nan_is_analysed_at_once(tmp_path):
    jobs = Jobs(tmp_path)
    jobs.apply("train", "dpo-r8", 5, False)
    incremental = IncrementalAnalysis(open_path(tmp_path), heartbeat=float("inf"), findings_age=3600)
    incremental.update()
    before = incremental.analysed
    jobs.apply("train", "dpo-r8", 1, False)
    assert incremental.update() is not None
    assert incremental.changed == {"dpo-r8"}  # its view is redrawn (new step, new values)...
    assert incremental.analysed == before  # ...from the same analysis
    jobs.apply("train", "dpo-r8", 1, True)  # a NaN loss
    result = incremental.update()
    assert incremental.analysed == before + 1
    cell = next(c for c in result.cells if c.source.id == "dpo-r8")
    assert cell.diagnosis.has("non_finite")


def test_the_heartbeat_redoes_running_cells_only(tmp_path):
    """Only a running cell's findings read the clock (stalled, an idle GPU): the heartbeat redoes
    those, and a grid whose cells have all ended costs no analysis at all while it is on screen."""
    jobs = Jobs(tmp_path)
    jobs.apply("train", "dpo-r8", 5, False)
    jobs.apply("train", "simpo-r16", 5, False)
    jobs.apply("end", "simpo-r16", 0, False)
    incremental = IncrementalAnalysis(open_path(tmp_path), heartbeat=0.0)  # every update is a heartbeat
    first = incremental.update()
    states = {c.source.id: c.status.state for c in first.cells}
    assert states["dpo-r8"] == rundir.CellState.RUNNING and states["simpo-r16"] == rundir.CellState.FINISHED
    before = incremental.analysed
    assert incremental.update() is not None
    assert incremental.analysed - before == 1 and incremental.changed == {"dpo-r8"}
    for cell in CELLS:
        jobs.apply("end", cell, 0, False)
    incremental.update()
    before = incremental.analysed
    assert incremental.update() is None and incremental.update() is None
    assert incremental.analysed == before
