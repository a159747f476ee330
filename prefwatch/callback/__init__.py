"""PrefwatchCallback: write a Trainer's logs as prefwatch's metrics.jsonl, from any TRL script.

    from prefwatch.callback import PrefwatchCallback
    trainer.add_callback(PrefwatchCallback("out/metrics.jsonl"))
    trainer.add_callback(PrefwatchCallback("out/metrics.jsonl", completions=8))  # and what the model writes

Each Trainer log event becomes one line: the Trainer's own log dict (train keys as TRL names them,
evaluation keys with their `eval_` prefix, the final train_runtime record too) plus `step` and `time`.
Lines are appended and flushed one by one, so a monitor can tail the file while training runs.

With ``completions=N`` (opt-in), every evaluation also answers the same N held-out prompts greedily
(``max_new_tokens`` at most) into ``completions.jsonl`` beside the metrics, and the reference (the
model with its adapter disabled) answers them once as step 0 (prefwatch.callback.completions). The
prompts are ``prompts`` (a list, or a data set with a ``prompt`` column) or else the evaluation's
own data set. A full fine-tune without a separate reference gets its step 0 from the model as it is
when training begins, which needs ``prompts`` given up front.
This package imports transformers only, never torch, trl, peft or prefwatch's trainer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from prefwatch.callback.completions import CompletionSampler
from prefwatch.files import safe


class PrefwatchCallback(TrainerCallback):
    """Append every log event to a JSONL file (on the main process only); optionally sample completions."""

    def __init__(
        self,
        path: str | Path,
        completions: int = 0,
        prompts: Any = None,
        max_new_tokens: int = 64,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sampler: CompletionSampler | None = None
        if completions > 0:
            from prefwatch.files.rundir import COMPLETIONS_FILE  # the run directory's names: only when sampling

            self.sampler = CompletionSampler(self.path.parent / COMPLETIONS_FILE, completions, max_new_tokens)
            if prompts is not None:
                self.sampler.choose(prompts)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or logs is None:
            return
        record = {**logs, "step": state.global_step, "time": time.time()}
        # Opened per line: a reader never sees a half-buffered record, and no handle outlives training.
        with safe.open_append(self.path) as f:  # never through a link planted in its place
            f.write((json.dumps(record, default=float) + "\n").encode())  # float: numpy and 0-d tensor values

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        """The reference answers before any update, when the prompts are known already."""
        sampler = self.sampler
        if sampler is None or not state.is_world_process_zero or sampler.reference_written or not sampler.prompts:
            return
        if state.global_step == 0:
            sampler.generate(model, processing_class, 0, reference=True)

    def on_evaluate(self, args, state, control, model=None, processing_class=None, eval_dataloader=None, **kwargs):
        sampler = self.sampler
        if sampler is None or not state.is_world_process_zero:
            return
        if sampler.prompts is None and eval_dataloader is not None:
            sampler.choose(eval_dataloader.dataset)
        if not sampler.reference_written and hasattr(model, "disable_adapter"):
            sampler.generate(model, processing_class, 0, reference=True)  # the adapter off: the reference
        sampler.generate(model, processing_class, state.global_step)
