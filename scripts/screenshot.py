"""Save the monitor's screen on sample_runs/tiny-demo as an SVG (the README's screenshot).

python scripts/screenshot.py [OUT.svg] [COLUMNS] [ROWS]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from prefwatch.ingest.discover import open_path
from prefwatch.tui.app import MonitorApp

ROOT = Path(__file__).resolve().parent.parent


async def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "monitor.svg"
    size = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (100, 30)
    app = MonitorApp(open_path(ROOT / "sample_runs" / "tiny-demo"), mode="replay")
    async with app.run_test(size=size) as pilot:
        await app.workers.wait_for_complete()  # the replay reads the logs in a worker
        await pilot.pause(0.5)
        app.save_screenshot(filename=out.name, path=str(out.parent))
    print(out)


if __name__ == "__main__":
    asyncio.run(main())
