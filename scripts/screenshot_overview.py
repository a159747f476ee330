"""Save the overview of a 64-cell sweep at 120×36 as an SVG (the README's second screenshot).

    python scripts/screenshot_overview.py [OUT.svg]

The sweep is written to a temporary folder: 2 objectives × 4 ranks × 8 seeds of TRL-shaped logs
(seeded, so the picture is the same each time), a few of them diverged or over-optimised, which
is what the overview is for: finding the cells to look at among 64.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

from prefwatch.ingest.discover import open_path
from prefwatch.tui.app import MonitorApp
from prefwatch.tui.screens.overview import OverviewScreen

ROOT = Path(__file__).resolve().parent.parent
STEPS = 200


def write_sweep(root: Path) -> Path:
    grid = root / "sweep-64"
    rng = random.Random(7)
    start = time.time() - 3600
    for objective in ("dpo", "simpo"):
        for rank in (4, 8, 16, 32):
            for seed in range(8):
                name = f"{objective}-r{rank}-seed{seed}"
                skill = 0.55 + 0.04 * math.log2(rank) + (0.05 if objective == "simpo" else 0.0) + rng.gauss(0, 0.02)
                diverges = rng.random() < 0.05
                overfits = rank == 32 and rng.random() < 0.5
                lines = []
                for step in range(1, STEPS + 1):
                    margin = 0.02 * step * (1.6 if overfits and step > 100 else 1.0) + rng.gauss(0, 0.05)
                    loss = math.nan if diverges and step > 150 else max(0.05, 0.69 - 0.002 * step)
                    lines.append(
                        {
                            "loss": loss,
                            "rewards/chosen": margin / 2,
                            "rewards/rejected": -margin / 2,
                            "rewards/margins": margin,
                            "rewards/accuracies": min(1.0, 0.5 + step / 300),
                            "step": step,
                            "time": start + 5 * step,
                        }
                    )
                    if step % 20 == 0:
                        peak = 100 if overfits else STEPS
                        accuracy = skill * min(1.0, 0.8 + 0.2 * step / peak) - (
                            0.002 * (step - peak) if step > peak else 0
                        )
                        lines.append(
                            {
                                "eval_rewards/accuracies": round(accuracy + rng.gauss(0, 0.01), 3),
                                "eval_rewards/margins": 0.012 * step,
                                "step": step,
                                "time": start + 5 * step,
                            }
                        )
                if not diverges:
                    lines.append({"train_runtime": 5.0 * STEPS, "step": STEPS})
                folder = grid / name
                folder.mkdir(parents=True)
                (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return grid


async def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "overview.svg"
    with tempfile.TemporaryDirectory() as tmp:
        app = MonitorApp(open_path(write_sweep(Path(tmp))), mode="replay")
        async with app.run_test(size=(120, 36)) as pilot:
            await app.workers.wait_for_complete()  # the replay reads the logs in a worker
            while not isinstance(app.screen, OverviewScreen):
                await pilot.pause(0.05)
            await pilot.pause(0.5)
            await pilot.press("a")  # best held-out accuracy first, grouped by objective
            await pilot.pause(0.5)
            app.save_screenshot(filename=out.name, path=str(out.parent))
    print(out)


if __name__ == "__main__":
    asyncio.run(main())
