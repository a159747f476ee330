"""PrefwatchCallback: write a Trainer's logs as prefwatch's metrics.jsonl, from any TRL script.

    from prefwatch.callback import PrefwatchCallback
    trainer.add_callback(PrefwatchCallback("out/metrics.jsonl"))

Each Trainer log event becomes one line: the Trainer's own log dict (train keys as TRL names them,
evaluation keys with their `eval_` prefix, the final train_runtime record too) plus `step` and `time`.
Lines are appended and flushed one by one, so a monitor can tail the file while training runs.
This module imports transformers only, never trl, peft or prefwatch's trainer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class PrefwatchCallback(TrainerCallback):
    """Append every log event to a JSONL file (on the main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or logs is None:
            return
        record = {**logs, "step": state.global_step, "time": time.time()}
        # Opened per line: a reader never sees a half-buffered record, and no handle outlives training.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")  # float: numpy and 0-d tensor values
