"""The layering the design promises, checked on the source.

Every module of the package belongs to a layer (its subpackage, or a top-level module named here), and
imports only from its own package or from layers below it; no two modules import each other, however
indirectly. The log readers never reach the process layer, and status.json is written in one place
(``prefwatch.files.rundir``), called only by the jobs layer.

    layer 0  core, files             pure rules and types; the files the parts share (grid, run directory)
    layer 1  ingest                  log readers: one module per format, the store readers under readers/
    layer 2  analysis                sources -> findings -> verdict (given statuses and a clock)
    layer 3  run, callback           backends, jobs, the job wrapper, Slurm; the public TRL callback and
                                     its completion sampler (transformers only; the trainer uses both)
    layer 4  act, report, train      alerts/policy/supervisor; text/Markdown/JSON/HTML/plot; the trainer
    layer 5  view                    what the monitor shows, without Textual: the views of the grid
                                     (model) and the feed that reads, paces and alerts (feed)
    layer 6  tui                     the Textual monitor: draws the feed's views, asks, acts on keys
    layer 7  cli, completion, __main__
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "prefwatch"
LAYERS = {
    "core": 0, "files": 0,
    "ingest": 1,
    "analysis": 2,
    "run": 3, "callback": 3,
    "act": 4, "report": 4, "train": 4,
    "view": 5,
    "tui": 6,
    "top": 7,
}  # fmt: skip
# The top-level modules of the command line.
TOP = {"cli", "completion", "__main__", "__init__"}
# Top-level modules that belong to a package's layer (none today).
MEMBERS: dict[str, str] = {}
PROCESS_LAYER = {"run", "act"}
# The jobs layer: the only callers of rundir.write_status / update_status.
STATUS_WRITERS = {"jobs.py", "backend.py", "supervise.py", "slurm.py", "job.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (lazy imports in functions included)."""
    names = set()
    own = module_name(path).split(".") if path.is_relative_to(PACKAGE) else [path.stem]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the importing module's package
                base = own[: len(own) - node.level + (1 if path.name == "__init__.py" else 0)]
                module = ".".join(base + ([module] if module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def internal_imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's own modules that ``path`` imports (``from prefwatch.core import diagnose`` names
    prefwatch.core.diagnose; a package's ``__init__`` is not counted for its submodules)."""
    found = set()
    for name in imports(path):
        if name in known and name != "prefwatch":
            found.add(name)
    own = module_name(path)
    return {n for n in found if n != own and not own.startswith(n + ".")}


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    key = "top" if key in TOP else MEMBERS.get(key, key)
    assert key in LAYERS, f"{module} is in no layer: add its package or module to LAYERS (and the README picture)"
    return key, LAYERS[key]


def test_every_module_is_in_a_layer_and_imports_only_below_it() -> None:
    known = modules()
    assert len(known) > 40
    check_layers(known)


def check_layers(known: dict[str, Path]) -> None:
    for module, path in known.items():
        package, layer = layer_of(module)
        for target in internal_imports(path, known):
            other, other_layer = layer_of(target)
            assert other == package or other_layer < layer, (
                f"{module} (layer {layer}: {package}) imports {target} (layer {other_layer}: {other})"
            )


def test_no_module_imports_itself_through_others() -> None:
    check_circles(modules())


def check_circles(known: dict[str, Path]) -> None:
    graph = {m: internal_imports(p, known) for m, p in known.items()}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_readers_and_the_analysis_import_nothing_of_the_process_layer() -> None:
    known = modules()
    readers = [m for m in known if layer_of(m)[0] in {"core", "files", "ingest", "analysis", "report"}]
    assert len(readers) >= 25
    for module in readers:
        found = imports(known[module])
        reached = {n for n in found if n.startswith("prefwatch.") and n.split(".")[1] in PROCESS_LAYER}
        assert not reached, f"{module} imports {sorted(reached)}"
        if layer_of(module)[0] != "files":  # files.system samples its own process with psutil, runs nothing
            assert "subprocess" not in found, f"{module} runs processes"


def test_the_core_imports_neither_textual_nor_torch() -> None:
    known = modules()
    heavy = {"textual", "torch", "transformers", "trl", "peft", "rich"}
    for module, path in known.items():
        if layer_of(module)[1] <= 2:
            found = {n.split(".")[0] for n in imports(path)}
            assert not found & (heavy - {"rich"}), f"{module} imports {sorted(found & heavy)}"


def test_the_monitors_feed_and_views_import_no_textual() -> None:
    """The feed reads, paces and alerts with no screen: it imports nothing of Textual or Rich, nor
    of the monitor, so it can run (and be tested) without a terminal."""
    known = modules()
    view = [m for m in known if layer_of(m)[0] == "view"]
    assert {"prefwatch.view.feed", "prefwatch.view.model"} <= set(view)
    for module in view:
        found = imports(known[module])
        assert not {n.split(".")[0] for n in found} & {"textual", "rich"}, f"{module} imports a screen library"
        assert not [n for n in found if n.startswith("prefwatch.tui")], f"{module} imports the monitor"


def test_only_rundir_names_status_json_and_only_the_jobs_layer_writes_it() -> None:
    paths = [p for p in PACKAGE.rglob("*.py") if module_name(p) != "prefwatch.files.rundir"]
    assert len(paths) > 40
    for path in paths:
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


def test_the_checks_would_catch_a_regression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from prefwatch.run import jobs\nimport subprocess\n")
    assert {"prefwatch.run.jobs", "subprocess"} <= imports(bad)
    # A module of the core importing the monitor, and a circle of two: both are caught.
    pkg = tmp_path / "prefwatch"
    (pkg / "core").mkdir(parents=True)
    (pkg / "tui").mkdir()
    for f in ("__init__.py", "core/__init__.py", "tui/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "core" / "a.py").write_text("from prefwatch.tui import b\n")
    (pkg / "tui" / "b.py").write_text("from prefwatch.core import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    try:
        check_layers(modules())
    except AssertionError as exc:
        assert "prefwatch.core.a (layer 0: core) imports prefwatch.tui" in str(exc)
    else:
        raise AssertionError("an upward import went unseen")
    try:
        check_circles(modules())
    except AssertionError as exc:
        assert "import circle" in str(exc)
    else:
        raise AssertionError("a circle went unseen")
