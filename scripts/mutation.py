"""Mutation score of the core, module by module (``make mutation``; not in CI: it takes a while).

    python scripts/mutation.py [MODULE ...]      (default: every module in MODULES)

For each module, mutmut runs in a scratch copy of the repository with a [tool.mutmut] section of
its own: only that module is mutated, and only its fast unit tests run against each mutant (mutmut
picks, per mutant, the tests that executed the mutated function). The real-training, monitor and
Slurm tests never run here. Prints one table row per module: mutants, killed, survived, score; the
surviving mutants are listed under ``mutants/`` of the scratch copy (``mutmut results`` there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> its fast unit tests (in-process; no training, no monitor, no Slurm)
MODULES: dict[str, list[str]] = {
    "prefwatch/core/decide.py": ["tests/test_decide.py", "tests/test_decide_edges.py", "tests/test_verdicts_pinned.py"],
    "prefwatch/core/diagnose.py": [
        "tests/test_diagnose.py",
        "tests/test_diagnose_pinned.py",
        "tests/test_decide.py",
        "tests/test_verdicts_pinned.py",
        "tests/test_series_fold.py",
        "tests/test_diagnose_edges.py",
        "tests/test_analysis.py",
    ],
    "prefwatch/files/grid.py": ["tests/test_grid.py", "tests/test_grid_edges.py"],
    "prefwatch/analysis/analyse.py": [
        "tests/test_analysis.py",
        "tests/test_verdicts_pinned.py",
        "tests/test_report.py",
        "tests/test_system.py",
        "tests/test_real_logs.py",
    ],
    "prefwatch/ingest/tail.py": ["tests/test_ingest.py", "tests/test_tail_edges.py"],
    "prefwatch/core/series.py": [
        "tests/test_series.py",
        "tests/test_series_fold.py",
        "tests/test_ingest.py",
        "tests/test_diagnose.py",
        "tests/test_cache.py",
        "tests/test_ingest_tensorboard.py",
    ],
}
TARGETS = {"diagnose.py": 0.9, "decide.py": 0.9}  # else 0.8


def run_module(module: str, tests: list[str], children: int, keep: Path | None) -> dict[str, int]:
    scratch = Path(tempfile.mkdtemp(prefix="prefwatch-mutation-"))
    try:
        for name in ("prefwatch", "tests", "sample_runs", "examples"):
            shutil.copytree(ROOT / name, scratch / name, ignore=shutil.ignore_patterns("__pycache__"))
        config = (ROOT / "pyproject.toml").read_text()
        config += (
            "\n[tool.mutmut]\n"
            f"source_paths = [{json.dumps(module)}]\n"
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
            'also_copy = ["prefwatch", "tests", "sample_runs", "examples"]\n'
            # tests that run prefwatch as a child process cannot see the mutant: left out
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-k", "not as_a_process"]\n'
        )
        (scratch / "pyproject.toml").write_text(config)
        env = {**os.environ, "PYTHONPATH": "", "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(children)],
            cwd=scratch,
            env=env,
            check=False,
        )
        results = subprocess.run(
            [sys.executable, "-m", "mutmut", "results", "--all", "true"],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        counts: dict[str, int] = {}
        for line in results.splitlines():
            match = re.match(r"\s*\S+: (\w[\w ]*)$", line)
            if match:
                counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        survivors = [
            line.split(":")[0].strip() for line in results.splitlines() if line.endswith((": survived", ": no tests"))
        ]
        if keep is not None:
            stem = keep / module.replace("/", "_")
            stem.with_name(stem.name + ".survivors.txt").write_text("\n".join(survivors) + "\n")
            with open(stem.with_name(stem.name + ".survivors.diff"), "w") as f:
                for name in survivors:
                    shown = subprocess.run(
                        [sys.executable, "-m", "mutmut", "show", name],
                        cwd=scratch,
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    f.write(f"# {name}\n{shown.stdout or shown.stderr}\n")
            # The scratch copy stays for review: `mutmut show NAME` / `mutmut apply NAME` in it.
            kept = stem.with_name(stem.name + ".scratch")
            shutil.rmtree(kept, ignore_errors=True)
            shutil.move(scratch, kept)
        return counts
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of the core's listed ones)")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument(
        "--keep", type=Path, help="a folder for each module's surviving mutants (names, diffs, the scratch copy)"
    )
    args = parser.parse_args()
    modules = args.modules or list(MODULES)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    rows = []
    for module in modules:
        counts = run_module(module, MODULES[module], args.children, args.keep)
        killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("segfault", 0)
        survived = counts.get("survived", 0) + counts.get("no tests", 0)  # a mutant no test runs lives too
        other = sum(counts.values()) - killed - survived
        score = killed / max(1, killed + survived)
        target = TARGETS.get(Path(module).name, 0.8)
        rows.append((module, sum(counts.values()), killed, survived, other, score, target))
    print(f"\n{'module':28} {'mutants':>8} {'killed':>7} {'survived':>9} {'other':>6} {'score':>6}  target")
    for module, total, killed, survived, other, score, target in rows:
        mark = "ok" if score >= target else "BELOW"
        print(f"{module:28} {total:8d} {killed:7d} {survived:9d} {other:6d} {score:6.0%}  {target:.0%} {mark}")
    return 0 if all(row[5] >= row[6] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
