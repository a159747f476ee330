"""python -m prefwatch.train CELL.json [--resume]

Exit status: 0 when training finished; 2 when cell.json or the data cannot be used; 1 on any other
error. The last line on stderr says why, in one line; unexpected errors print their traceback to stdout first.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from prefwatch.files.rundir import SYSTEM_FILE
from prefwatch.files.settings import CellSettings
from prefwatch.run.backend import job_environment
from prefwatch.train.cell import CellError, load_cell
from prefwatch.train.data import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefwatch.train", description="Train one prefwatch cell.")
    parser.add_argument("cell", type=Path, help="the cell's cell.json; its folder receives the logs")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args = parser.parse_args(argv)
    try:
        cell = load_cell(args.cell)
        set_environment(cell)
        from prefwatch.files.system import Recorder
        from prefwatch.train.run import run  # after set_environment: torch reads thread settings at import

        interval = float(os.environ.get("PREFWATCH_SYSTEM_INTERVAL", "10"))  # tests sample faster
        with Recorder(args.cell.parent / SYSTEM_FILE, interval):  # system.jsonl: CPU, memory, GPUs
            run(cell, args.cell.parent, resume=args.resume)
    except (CellError, DataError) as e:
        return fail(str(e), status=2)
    except Exception as e:
        traceback.print_exc(file=sys.stdout)
        return fail(f"{type(e).__name__}: {e}", status=1)
    return 0


def set_environment(cell: CellSettings) -> None:
    """Thread counts before torch loads; no hub access when everything needed is embedded or local.

    The job's launch spec (prefwatch.run.backend.job_environment) sets the same on either backend; this
    fills it in for a trainer started by hand."""
    for name, value in job_environment(cell).items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's progress bars would flood stdout.log
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPO and ORPO live in trl.experimental


def fail(message: str, status: int) -> int:
    print(f"prefwatch.train: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
