"""Run the monitor without a terminal (frames rendered to ANSI and thrown away), as ``prefwatch attach`` would.

    python bench/headless.py attach|replay FOLDER

Used by bench/bench_cpu.py for the headless half of its measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import NullTerminal  # noqa: E402

from prefwatch.ingest.discover import open_path  # noqa: E402
from prefwatch.tui.app import MonitorApp  # noqa: E402


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    app = MonitorApp(open_path(folder), mode="live" if mode == "attach" else "replay")
    app.driver_class = NullTerminal
    app.run(size=(160, 48))


if __name__ == "__main__":
    main()
