"""Small helpers shared by the tests that drive real jobs: the CLI in a subprocess, a cell's state and
last logged step, and waiting for a condition with a deadline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prefwatch.run import jobs


def prefwatch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefwatch", *args], capture_output=True, text=True, timeout=timeout)


def status(run_dir: Path, cell: str) -> jobs.CellStatus:
    return jobs.read_status(run_dir / "cells" / cell)


def last_step(run_dir: Path, cell: str) -> int:
    path = run_dir / "cells" / cell / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.strip()), default=0)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> float:
    """Seconds until ``predicate()`` held; AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def markdown_text(markdown: str) -> str:
    """What Markdown reads as: its backslash escapes (CommonMark's, of ASCII punctuation) undone."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def launched(root: Path, name: str, toml: str, cells: list[str], timeout: float = 600) -> Path:
    """Launch the grid ``toml`` (named ``name``) detached under ``root`` and wait for ``cells`` to finish."""
    grid = root / f"{name}.toml"
    grid.write_text(toml)
    result = prefwatch("launch", str(grid), "--detach", "--out", str(root))
    assert result.returncode == 0, result.stderr
    run = root / name
    wait_for(lambda: all(status(run, c).state == "finished" for c in cells), timeout, f"the cells of {name} to finish")
    return run
