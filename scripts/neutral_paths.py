"""Make a generated sample run speak of itself only: the machine's interpreter and temporary folder
recorded in its files (status.json's command, supervisor.log) become neutral, run-relative paths.

    python scripts/neutral_paths.py RUN_DIR TEMP_PREFIX
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run: Path, prefix: str) -> None:
    for status in run.glob("cells/*/status.json"):
        record = json.loads(status.read_text())
        command = record.get("command") or []
        if command:
            command[0] = "python3"
            record["command"] = [arg.replace(f"{prefix}/{run.name}/", "") for arg in command]
        status.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    log = run / "supervisor.log"
    if log.exists():
        log.write_text(log.read_text().replace(f"{prefix}/", "runs/"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].rstrip("/"))
