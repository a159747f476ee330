"""Hostile or broken run-directory records (status.json, cell.json): through the typed readers in
prefwatch.files.rundir each is a one-line error or a counted rejection, never a traceback, and the rest of the
grid is still shown. The CLI runs in-process here (fast) and once per kind in a subprocess (real exit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import prefwatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefwatch.cli import main
from prefwatch.files import rundir
from prefwatch.files.grid import load_grid
from prefwatch.run import jobs

ROOT = Path(__file__).resolve().parent.parent
DEEP = '{"previous":' * 1100 + "{}" + "}" * 1100

STATUS = {
    "NaN pid": '{"state": "running", "pid": NaN, "pgid": NaN}',
    "Infinity start": '{"state": "running", "pid": 5, "pid_start": Infinity}',
    "1e400": '{"state": "running", "pid": 1e400}',
    "nested 1100 deep": DEEP,
    "state of the wrong type": '{"state": 5}',
    "unknown state": '{"state": "exploded"}',
    "not an object": "[1, 2, 3]",
    "empty": "",
    "binary": "\x00\x09\xff\xfe" * 64,
    "escape in host": '{"state": "running", "host": "\\u001b[31mevil", "pid": 1, "pgid": 1}',
    "negative pid": '{"state": "running", "pid": -1, "pgid": -1}',
    "huge": '{"state": "running", "command": ["' + "x" * (2 << 20) + '"]}',
}
CELL = {
    "objective of the wrong type": '{"objective": 5, "rank": 8}',
    "rank a string": '{"objective": "dpo", "rank": "16"}',
    "index not a number": '{"index": "first"}',
    "nested 1100 deep": '{"train":' * 1100 + "{}" + "}" * 1100,
    "NaN max_steps": '{"objective": "dpo", "train": {"max_steps": NaN}}',
    "not an object": "null",
    "binary": "\xff\xfe\x00",
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jobs.create_run_dir(load_grid(ROOT / "examples" / "tiny-grid.toml"), tmp_path_factory.mktemp("runs"))


def grid_with(tmp_path: Path, pristine: Path, name: str, text: str) -> Path:
    import shutil

    run_dir = tmp_path / pristine.name
    shutil.copytree(pristine, run_dir)
    (run_dir / "cells" / "dpo-r8" / name).write_text(text, encoding="utf-8", errors="surrogateescape")
    return run_dir


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", list(STATUS))
def test_hostile_status_json(case: str, tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = grid_with(tmp_path, pristine, "status.json", STATUS[case])
    status = jobs.read_status(run_dir / "cells" / "dpo-r8")
    assert status.state in rundir.CellState
    if status.error:
        assert "\n" not in status.error and "status.json" in status.error
    code, out, err = run_cli(capsys, "status", str(run_dir))
    assert code == 0 and "Traceback" not in err and "dpo-r16" in out and "\x1b" not in out
    code, out, _ = run_cli(capsys, "report", str(run_dir), "--format", "json")
    assert code in (0, 3)
    report = json.loads(out)
    assert [c["id"] for c in report["cells"]] == ["dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"]
    # stop: nothing to prove, so nothing signalled; one line at most per refused cell
    code, out, err = run_cli(capsys, "stop", str(run_dir), "dpo-r8", "--grace", "0")
    assert code in (0, 1) and len(err.splitlines()) <= 1 and "Traceback" not in err


@pytest.mark.parametrize("case", list(CELL))
def test_hostile_cell_json(case: str, tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = grid_with(tmp_path, pristine, "cell.json", CELL[case])
    code, out, err = run_cli(capsys, "report", str(run_dir), "--format", "json")
    assert code in (0, 3) and "Traceback" not in err
    cells = {c["id"]: c for c in json.loads(out)["cells"]}
    assert set(cells) == {"dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"}
    broken = cells["dpo-r8"]
    if broken["ingest"]["error"]:
        assert "cell.json" in broken["ingest"]["error"] and "\n" not in broken["ingest"]["error"]
    code, out, err = run_cli(capsys, "status", str(run_dir))
    assert code == 0 and "dpo-r8" in out


def test_in_a_real_process_the_exit_is_clean(tmp_path: Path, pristine: Path) -> None:
    run_dir = grid_with(tmp_path, pristine, "status.json", DEEP)
    (run_dir / "cells" / "simpo-r8" / "cell.json").write_text(CELL["nested 1100 deep"])
    for args in (("status", str(run_dir)), ("report", str(run_dir)), ("stop", str(run_dir), "--grace", "0")):
        result = prefwatch(*args)
        assert result.returncode in (0, 1, 3) and "Traceback" not in result.stderr, (args, result.stderr)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
fields = st.sampled_from(["state", "pid", "pgid", "pid_start", "host", "backend", "exit_code", "previous", "job_id"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.dictionaries(fields, json_values, max_size=6) | json_values)
def test_any_json_as_status_reads_without_an_exception(record: object, tmp_path: Path) -> None:
    cell_dir = tmp_path / "c"
    cell_dir.mkdir(exist_ok=True)
    (cell_dir / "cell.json").write_text("{}")
    (cell_dir / "status.json").write_text(json.dumps(record))
    status = jobs.read_status(cell_dir, supervisor_alive=False)
    assert status.state in rundir.CellState and isinstance(status.describe(), str)
    killed: list[int] = []
    original = os.killpg
    os.killpg = lambda pgid, sig: killed.append(pgid)  # type: ignore[assignment]
    try:
        from prefwatch.run.backend import LocalBackend

        LocalBackend().cancel([cell_dir], grace=0)
    except rundir.RecordError:
        pass
    finally:
        os.killpg = original
    assert killed == []  # nothing in a made-up record is ever provably this cell's job


cell_fields = st.sampled_from(["objective", "rank", "seed", "index", "model", "data", "train", "lora", "threads"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.dictionaries(cell_fields, json_values, max_size=5) | json_values)
def test_any_json_as_cell_json_reads_or_is_one_line_naming_the_file(record: object, tmp_path: Path) -> None:
    path = tmp_path / "c" / "cell.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(record))
    try:
        cell = rundir.read_cell_file(path)
    except rundir.RecordError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
    else:
        assert isinstance(record, dict) and cell.given >= set(record)
        assert all(cell.says(key) is None for key in ("rank", "seed") if key not in record)
