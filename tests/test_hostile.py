"""Input that cannot crash (issue 11): every hostile value gives a counted, named rejection and the
rest of the grid is still reported, in every format; memory stays bounded by the input's size.

The corpus is tests/hostile.py (``python tests/hostile.py`` prints the figures for the closing note).
The report and status run in this process through ``prefwatch.cli.main`` (a traceback fails the test);
the memory cases run in a subprocess whose peak resident memory is read from its own rusage.
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from helpers import markdown_text
from hostile import BAD_CELL, CASES, GOOD_CELL, MEMORY_CASES, logs_folder, memory_case, run_cli, sample_grid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ingest_tensorboard import event, field, file_version_event, record, simple_value, tensor_value, varint

from prefwatch import cli
from prefwatch.core import metrics
from prefwatch.ingest.readers import tensorboard as tb
from prefwatch.ingest.tail import MAX_LINE_BYTES, TailReader

# cell.json is read whole through rundir's typed record: a field of the wrong type is the cell's one-line
# read error (the labels are then guessed from the folder name), not a count.
CELL_JSON_ERROR = "error: cell.json"

# What each case must be counted as, in the damaged cell's ingest.rejected_by_reason (None: not a rejection).
EXPECTED: dict[str, str | None] = {
    "step NaN": "bad step",
    "step Infinity": "bad step",
    "step -Infinity": "bad step",
    "step 1e400": "bad step",
    "value 1e400": None,  # a value that overflowed is a non-finite point, which the divergence check reports
    "step 2^70": "bad step",
    "nested line": "nested too deep",
    "nested value": "nested too deep",
    'key with "': "bad metric name",
    "key with \\": "bad metric name",
    "key with escaped control": "bad metric name",
    "key with raw control": "not JSON",  # a raw control character inside a JSON string is invalid JSON
    "eval_pairs step Infinity": "bad eval_pairs line",
    "eval_pairs step NaN": "bad eval_pairs line",
    "data.json NaN": None,
    "data.json nested": None,
    "seed NaN": CELL_JSON_ERROR,
    "seed Infinity": CELL_JSON_ERROR,
    "objective a number": CELL_JSON_ERROR,
    "objective a list": CELL_JSON_ERROR,
    "objective with escapes": None,
    "rank a string": CELL_JSON_ERROR,
    "trainer_state nested": "trainer_state without log_history",
    "trainer_state nested whole": "trainer_state without log_history",
    "trainer_state NaN step": "bad step",
    "tensorboard odd float_val": "bad event record",
    "tensorboard 10-byte step": "bad step",
    "tensorboard 10-byte step (tensor)": "bad step",
    "tensorboard length over 2^28": "damaged record header",
}


def strict_json(text: str) -> Any:
    """Parse as RFC 8259 JSON: NaN and Infinity tokens are an error."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out


def test_every_case_has_an_expectation() -> None:
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_value_is_counted_and_the_rest_reported(case: str, tmp_path: Path, capsys) -> None:
    path = str(CASES[case](tmp_path))
    status, out = report(capsys, "report", "--format", "json", path)
    assert status in (0, 3)
    grid = strict_json(out)
    cells = {c["id"]: c for c in grid["cells"]}
    assert cells[GOOD_CELL]["step"] == 100 and not cells[GOOD_CELL]["ingest"]["rejected"]
    bad = cells[BAD_CELL] if BAD_CELL in cells else cells["simpo-r16-out"]
    reason = EXPECTED[case]
    if reason == CELL_JSON_ERROR:
        assert "cell.json" in bad["ingest"]["error"] and "\n" not in bad["ingest"]["error"]
    elif reason is not None:
        assert bad["ingest"]["rejected_by_reason"].get(reason, 0) >= 1, bad["ingest"]
    for fmt in ("terminal", "md"):
        status, out = report(capsys, "report", "--format", fmt, path)
        assert status in (0, 3) and GOOD_CELL in out
        assert "\x1b" not in out and "\x07" not in out
    status, out = report(capsys, "status", path)
    assert status == 0 and GOOD_CELL in out and "\x1b" not in out


def test_non_finite_data_and_seed_become_null(tmp_path: Path, capsys) -> None:
    grid = CASES["data.json NaN"](tmp_path / "a")
    cell = {c["id"]: c for c in strict_json(report(capsys, "report", "--format", "json", str(grid))[1])["cells"]}
    assert cell[BAD_CELL]["data"]["heldout_pairs"] is None
    assert cell[GOOD_CELL]["data"]["heldout_pairs"] == 100
    grid = CASES["seed NaN"](tmp_path / "b")
    cell = {c["id"]: c for c in strict_json(report(capsys, "report", "--format", "json", str(grid))[1])["cells"]}
    assert cell[BAD_CELL]["seed"] is None and cell[GOOD_CELL]["seed"] == 0


def test_objective_escapes_print_literally_in_the_headline(tmp_path: Path, capsys) -> None:
    grid = sample_grid(tmp_path)
    for cell in grid.glob("cells/dpo-*/cell.json"):  # every dpo cell: the escape reaches the verdict
        data = json.loads(cell.read_text())
        data["objective"] = "dpo\x1b[2J\x1b]0;pwned\x07[bold]"
        cell.write_text(json.dumps(data))
    for fmt in ("terminal", "md"):
        _, out = report(capsys, "report", "--format", fmt, str(grid))
        assert "\x1b" not in out and "\x07" not in out
        assert "\\x1b[2J" in (out if fmt == "terminal" else markdown_text(out))  # shown, as a visible escape
    _, out = report(capsys, "report", "--format", "json", str(grid))
    assert "\x1b" not in out  # JSON writes a control character as \u001b
    strict_json(out)
    # The logs now decide a cell's objective (a mismatch is a finding), so no grid read from disk puts
    # this objective in the headline: render a verdict that names it, as a grid of such cells would.
    from rich.console import Console

    from prefwatch.analysis.analyse import analyse
    from prefwatch.ingest.discover import open_path
    from prefwatch.report.text import render_markdown, render_terminal

    source = open_path(sample_grid(tmp_path / "clean"))
    source.poll()
    analysis = analyse(source)
    analysis.verdict.objective = "dpo\x1b[2J\x1b]0;pwned\x07[bold]"
    console = Console(record=True, width=200, force_terminal=True)
    render_terminal(analysis, console)
    headline = next(line for line in console.export_text().splitlines() if "pwned" in line)
    assert headline.startswith("dpo\\x1b[2J\\x1b]0;pwned\\x07[bold]")
    assert "\x1b" not in render_markdown(analysis) and "\\x1b[2J" in markdown_text(render_markdown(analysis))


def test_mathtext_in_an_objective_is_drawn_literally(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    grid = sample_grid(tmp_path)
    for cell in grid.glob("cells/dpo-*/cell.json"):
        data = json.loads(cell.read_text())
        data["objective"] = "dpo$\\frac{$"  # matplotlib would parse it as mathtext, and fail
        cell.write_text(json.dumps(data))
    status, _ = report(capsys, "report", str(grid), "--plot", str(tmp_path / "curves.png"))
    assert status in (0, 3) and (tmp_path / "curves.png").stat().st_size > 10_000


def test_cell_folder_names_print_literally_in_status(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # the whole name fits its column
    grid = sample_grid(tmp_path)
    (grid / "cells" / BAD_CELL).rename(grid / "cells" / "dpo-[bold]x\x1b[2J")
    status, out = report(capsys, "status", str(grid))
    assert status == 0 and "\x1b" not in out and "dpo-[bold]x\\x1b[2J" in out


def test_markup_in_a_run_dir_name_is_not_interpreted_in_errors(tmp_path: Path, capsys) -> None:
    strange = tmp_path / "[bold]x\x1b[31m"
    status = cli.main(["stop", str(strange)])
    err = capsys.readouterr().err
    assert status == 2 and "\x1b" not in err and "[bold]x\\x1b[31m" in err and len(err.splitlines()) == 1


# ---- memory: peak resident memory of a report, per MB of hostile input -----------------------------

MB_PER_MB = 50


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory) -> int:
    root, _ = logs_folder(tmp_path_factory.mktemp("base"), "empty")
    return min(run_cli("report", "--format", "json", str(root))[3] for _ in range(2))


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_memory_stays_bounded(case: str, tmp_path: Path, baseline_rss: int) -> None:
    root, size = memory_case(tmp_path, case)
    status, out, err, peak = run_cli("report", "--format", "json", str(root), timeout=300)
    assert status in (0, 3) and "Traceback" not in err
    cells = {c["id"]: c for c in strict_json(out)["cells"]}
    assert cells[GOOD_CELL]["step"] == 100
    grown = max(0, peak - baseline_rss)
    # 8 MB of slack for allocator noise on small inputs
    assert grown <= MB_PER_MB * size + (8 << 20), f"{grown / 1e6:.0f} MB for {size / 1e6:.2f} MB of input"


def test_names_past_the_cap_are_counted(tmp_path: Path, capsys) -> None:
    root, _ = memory_case(tmp_path, "metrics.jsonl new key per line (230 KB)")
    cells = {c["id"]: c for c in strict_json(report(capsys, "report", "--format", "json", str(root))[1])["cells"]}
    rejected = cells["simpo-r16-out"]["ingest"]["rejected_by_reason"]
    lines = (root / "simpo-r16-out" / "metrics.jsonl").read_text().count("\n")
    assert rejected[f"metric names past {metrics.MAX_NAMES} per split"] == lines - metrics.MAX_NAMES


# ---- live: the carried-over partial buffers stay capped ------------------------------------------


def test_tfrecord_damage_is_skipped_live_and_the_carry_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1700000000.host"
    good = [record(event(step, [simple_value("train/loss", 0.5)])) for step in range(1, 4)]
    path.write_bytes(record(file_version_event()) + good[0] + struct.pack("<Q", 1 << 40) + b"\0" * 4)
    reader = tb.EventFileReader(path)
    first, _ = reader.poll()
    assert first.steps.tolist() == [1] and first.rejected["damaged record header"] == 1
    for _ in range(20):  # garbage keeps coming: what is carried to the next poll does not grow
        with open(path, "ab") as f:
            f.write(b"\x09" * 100_000)
        reader.poll()
        assert len(reader._partial) <= 12
    with open(path, "ab") as f:
        f.write(good[1] + good[2])
    later, _ = reader.poll()
    assert later.steps.tolist() == [2, 3]


def test_a_jsonl_line_without_end_is_capped_live(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"")
    reader = TailReader(path)
    for _ in range(5):
        with open(path, "ab") as f:
            f.write(b"\x09" * (MAX_LINE_BYTES // 2))
        batch = reader.poll()
        assert len(reader._partial) <= MAX_LINE_BYTES
    with open(path, "ab") as f:
        f.write(b'\n{"step": 1, "loss": 0.5}\n')
    batch = reader.poll()
    assert batch.records == [{"step": 1, "loss": 0.5}]


# ---- property tests: any mix of hostile atoms, read and reported without a traceback ----------------

NAMES = st.sampled_from(["loss", "eval_loss", "rewards/margins", "eval_rewards/accuracies", 'a"b', "a\\b", "\x1b[31m"])
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(1 << 80), max_value=1 << 80),
    st.sampled_from([1e308, -0.0, 2**53 + 1]),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
RECORDS = st.dictionaries(
    st.one_of(NAMES, st.just("step"), st.just("time"), st.text(max_size=6)), JSON_VALUES, max_size=6
)
RAW_LINES = st.one_of(
    RECORDS.map(lambda r: json.dumps(r).encode()),
    st.sampled_from([b"[" * 1100 + b"]" * 1100, b'{"step": Infinity}', b'{"step": 1e400}', b"\x09" * 300]),
    st.binary(max_size=40),
)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def report_is_safe(root: Path, capsys: pytest.CaptureFixture[str], size: int) -> None:
    """The JSON report ends with 0 or 3 and strict JSON, and traced memory stays within 50 bytes a byte."""
    tracemalloc.start()
    try:
        status, out = report(capsys, "report", "--format", "json", str(root))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status in (0, 2, 3)
    if status != 2:
        strict_json(out)
    assert peak <= MB_PER_MB * size + (16 << 20)


@PROPERTY
@given(lines=st.lists(RAW_LINES, max_size=12), cut=st.booleans())
def test_any_metrics_log_reports(tmp_path_factory, capsys, lines: list[bytes], cut: bool) -> None:
    root = tmp_path_factory.mktemp("jsonl")
    cell = root / "dpo-r16"
    cell.mkdir()
    data = b"\n".join(lines) + (b"" if cut else b"\n")
    (cell / "metrics.jsonl").write_bytes(data)
    report_is_safe(root, capsys, len(data))


@PROPERTY
@given(
    history=st.one_of(st.lists(RECORDS, max_size=8), JSON_VALUES),
    extra=st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=3),
)
def test_any_trainer_state_reports(tmp_path_factory, capsys, history: Any, extra: dict[str, Any]) -> None:
    root = tmp_path_factory.mktemp("state")
    cell = root / "simpo-r8"
    cell.mkdir()
    data = json.dumps({**extra, "log_history": history}).encode()
    (cell / "trainer_state.json").write_bytes(data)
    report_is_safe(root, capsys, len(data))


STEPS = st.one_of(st.integers(0, 1000), st.integers(0, (1 << 64) - 1), st.just((1 << 70) - 1))


@st.composite
def tb_records(draw: st.DrawFn) -> bytes:
    step = draw(STEPS)
    tag = draw(st.one_of(NAMES, st.text(max_size=10)))
    value = draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
    kind = draw(st.sampled_from(["simple", "tensor", "odd packed", "garbage", "huge length"]))
    step_bytes = varint(step) if step < 1 << 64 else b"\xff" * 9 + b"\x7f"
    if kind == "simple":
        data = b"\x09" + struct.pack("<d", 1.7e9) + b"\x10" + step_bytes + field(5, field(1, simple_value(tag, value)))
    elif kind == "tensor":
        data = b"\x09" + struct.pack("<d", 1.7e9) + b"\x10" + step_bytes + field(5, field(1, tensor_value(tag, value)))
    elif kind == "odd packed":
        tensor = b"\x08\x01" + field(5, draw(st.binary(min_size=1, max_size=9)))
        data = event(1, []) + field(5, field(1, field(1, tag.encode()) + field(8, tensor)))
    elif kind == "garbage":
        return draw(st.binary(max_size=40))
    else:
        return struct.pack("<Q", draw(st.integers(1 << 28, (1 << 64) - 1))) + b"\0" * 4
    return record(data)


@PROPERTY
@given(records=st.lists(tb_records(), max_size=10), cut=st.integers(0, 30))
def test_any_event_file_reports(tmp_path_factory, capsys, records: list[bytes], cut: int) -> None:
    root = tmp_path_factory.mktemp("tb")
    cell = root / "dpo-r8-out"
    cell.mkdir()
    data = record(file_version_event()) + b"".join(records)
    data = data[: len(data) - cut] if cut < len(data) else data
    (cell / "events.out.tfevents.1700000000.host").write_bytes(data)
    report_is_safe(root, capsys, len(data))
    scalars, _ = tb.EventFileReader(cell / "events.out.tfevents.1700000000.host").poll()
    assert all(isinstance(v, float) for v in scalars.values.tolist())
    assert not any(math.isnan(s) for s in scalars.steps.astype(float).tolist())


@st.composite
def hostile_cells(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """A folder's worth of cells, each one log of one kind: (relative file path, bytes)."""
    cells = []
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["jsonl", "state", "tb"]))
        if kind == "jsonl":
            data = b"\n".join(draw(st.lists(RAW_LINES, max_size=12))) + b"\n"
            cells.append((f"dpo-r{index + 1}/metrics.jsonl", data))
        elif kind == "state":
            history = draw(st.one_of(st.lists(RECORDS, max_size=8), JSON_VALUES))
            cells.append((f"simpo-r{index + 1}/trainer_state.json", json.dumps({"log_history": history}).encode()))
        else:
            data = record(file_version_event()) + b"".join(draw(st.lists(tb_records(), max_size=10)))
            cells.append((f"orpo-r{index + 1}/events.out.tfevents.1700000000.host", data))
    return cells


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=hostile_cells())
def test_any_folder_of_hostile_logs_in_a_subprocess(tmp_path_factory, baseline_rss: int, cells) -> None:
    """The whole command in its own process: exit 0, 2 or 3, no traceback, peak RSS bounded by the input."""
    root = tmp_path_factory.mktemp("folder")
    for name, data in cells:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    size = sum(len(data) for _, data in cells)
    for args in (["report", "--format", "json"], ["status"]):
        status, out, err, peak = run_cli(*args, str(root))
        assert status in (0, 2, 3) and "Traceback" not in err, err
        assert status == 2 or args[0] == "status" or strict_json(out)
        assert peak - baseline_rss <= MB_PER_MB * size + (8 << 20)
