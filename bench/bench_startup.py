"""Start-up of `prefwatch --help` (and each subcommand's help) against `python -c "import argparse"`.

    python bench/bench_startup.py [RUNS]

Runs the commands interleaved, RUNS times each, and prints medians and ratios (target: <= 3x).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c 'import argparse'": [sys.executable, "-c", "import argparse"],
    "prefwatch --help": [sys.executable, "-m", "prefwatch", "--help"],
    "prefwatch launch --help": [sys.executable, "-m", "prefwatch", "launch", "--help"],
    "prefwatch report --help": [sys.executable, "-m", "prefwatch", "report", "--help"],
    "prefwatch --version": [sys.executable, "-m", "prefwatch", "--version"],
}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c 'import argparse'"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32} {median * 1000:7.1f} ms   {median / base:.2f}x")


if __name__ == "__main__":
    main()
