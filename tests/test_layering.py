"""The layering the design promises, checked on the source: the log readers never reach the process layer,
and status.json is written in one place (prefwatch.rundir), called only by the jobs layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "prefwatch"
PROCESS_LAYER = {"prefwatch.jobs", "prefwatch.slurm", "prefwatch.backend", "prefwatch.supervise", "prefwatch.job"}
READERS = [*sorted((PACKAGE / "ingest").glob("*.py")), *(PACKAGE / f"{m}.py" for m in ("analysis", "series", "report"))]
# The jobs layer: the only callers of rundir.write_status / update_status.
STATUS_WRITERS = {"jobs.py", "backend.py", "supervise.py", "slurm.py", "job.py"}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_readers_import_nothing_of_the_process_layer() -> None:
    assert len(READERS) >= 8
    for path in READERS:
        found = imports(path)
        assert not found & PROCESS_LAYER, f"{path.name} imports {sorted(found & PROCESS_LAYER)}"
        assert "subprocess" not in found, f"{path.name} runs processes"


def test_only_rundir_names_status_json_and_only_the_jobs_layer_writes_it() -> None:
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "rundir.py" or p.parent != PACKAGE]
    assert len(modules) > 30
    for path in modules:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == "status.json":
                raise AssertionError(f"{path.name}:{node.lineno} names status.json itself")
            if isinstance(node, (ast.Name, ast.Attribute)) and "STATUS_FILE" in (
                getattr(node, "id", None),
                getattr(node, "attr", None),
            ):
                raise AssertionError(f"{path.name}:{node.lineno} uses rundir.STATUS_FILE")
            called = node.func if isinstance(node, ast.Call) else None
            name = getattr(called, "attr", None) or getattr(called, "id", None)
            if name in ("write_status", "update_status") and path.name not in STATUS_WRITERS:
                raise AssertionError(f"{path.name}:{node.lineno} writes status.json outside the jobs layer")


def test_the_checks_would_catch_a_regression(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from prefwatch import jobs\nimport subprocess\n")
    assert {"prefwatch.jobs", "subprocess"} <= imports(bad)
