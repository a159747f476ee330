"""CPU-seconds the stop policy saves on a diverging grid: the same grid with [policy] stop_on = ["non_finite"]
and with stop_on = [], each launched for real on the embedded tiny model.

    python scripts/policy_savings.py [REPEATS] [MAX_STEPS]

A cell's CPU time is read from /proc/<pid>/stat (user + system, its children included) every 0.1 s
while it runs; the last reading before it exits is its total (at most 0.1 s short).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefwatch.run import jobs

GRID = """
name = "{name}"
[train]
max_steps = {steps}
learning_rate = 2.0
eval_every = 50
save_every = {steps}
[grid]
objectives = ["dpo"]
ranks = [8]
[resources]
devices = "cpu"
[policy]
stop_on = {stop_on}
"""
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:15]) / TICKS  # utime, stime, cutime, cstime


def measure(root: Path, name: str, stop_on: str, steps: int) -> tuple[float, int, str]:
    grid = root / f"{name}.toml"
    grid.write_text(GRID.format(name=name, stop_on=stop_on, steps=steps))
    subprocess.run([sys.executable, "-m", "prefwatch", "launch", str(grid), "--detach", "--out", str(root)], check=True)
    cell = root / name / "cells" / "dpo-r8"
    used, pid = 0.0, None
    while True:
        status = jobs.read_status(cell)
        pid = pid or status.raw.get("pid")
        if pid:
            now = cpu_seconds(pid)
            used = now if now is not None else used
        if status.state in jobs.ENDED_STATES:
            break
        time.sleep(0.1)
    step = max(
        int(line.split('"step": ')[1].split(",")[0]) for line in (cell / "metrics.jsonl").read_text().splitlines()
    )
    return used, step, status.describe()


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    print(f"load: {os.getloadavg()}")
    with_policy, without = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            on = measure(Path(tmp), f"on{i}", '["non_finite"]', steps)
            off = measure(Path(tmp), f"off{i}", "[]", steps)
            print(
                f"run {i}: policy {on[0]:.1f} CPU-s (step {on[1]}, {on[2]}); none {off[0]:.1f} CPU-s (step {off[1]}, {off[2]})"
            )
            with_policy.append(on[0])
            without.append(off[0])
    a, b = statistics.median(with_policy), statistics.median(without)
    print(
        f"median of {repeats}: with the policy {a:.1f} CPU-s, without {b:.1f} CPU-s: saved {b - a:.1f} ({(b - a) / b:.0%})"
    )
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
