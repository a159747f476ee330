"""The README's blocks marked runnable are run as a user would, in a scratch folder beside the samples."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- runnable -->\s*```sh\n(.*?)```", re.DOTALL)
BLOCKS = BLOCK.findall((ROOT / "README.md").read_text())


def test_the_readme_has_runnable_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.split()[1])
def test_readme_block_runs(block: str, tmp_path: Path) -> None:
    for shared in ("sample_runs", "examples"):
        (tmp_path / shared).symlink_to(ROOT / shared)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{block}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_the_sample_run_records_no_machine_paths() -> None:
    """sample_runs/ speaks of itself only: the interpreter and temporary folder of the machine that made it
    are neutral in its records (make sample-runs runs scripts/neutral_paths.py)."""
    root = Path(__file__).resolve().parent.parent / "sample_runs"
    absolute = re.compile(r"(?<![\w.])/(?:tmp|home|root|work|usr|opt|var|Users)/")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".log", ".toml")]
    assert len(files) >= 9
    found = [f"{p.relative_to(root)}: {m.group(0)}" for p in files for m in absolute.finditer(p.read_text())]
    assert not found, found
