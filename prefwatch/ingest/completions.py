"""completions.jsonl read back, bounded: every evaluation's figures, the texts of the recent ones.

A line is one evaluation (prefwatch.callback.completions writes it): ``step``, ``reference`` (step 0:
the reference's answers), ``max_new_tokens``, ``seconds`` and ``completions``, a list of ``id``,
``prompt``, ``text``, ``tokens``, ``eos``. The file is data written by a job, or by anyone: a line that
is not such a record is counted as rejected, never a traceback; texts longer than ``MAX_TEXT_CHARS``
are cut (with a mark), an evaluation keeps at most ``MAX_SAMPLES`` answers, and only the reference's
and the last ``KEEP_TEXTS`` evaluations' texts stay in memory (every evaluation's figures do).
Lone surrogates (what a JSON escape can make of bad UTF-8) are shown as escapes.
A W&B run gets the same from the table TRL's LogCompletionsCallback logs (``wandb_records`` below).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefwatch.core import metrics
from prefwatch.core.completions import Completion, Evaluation, length_stats
from prefwatch.files import safe

MAX_TEXT_CHARS = 4000
MAX_PROMPT_CHARS = 2000
MAX_SAMPLES = 64
KEEP_TEXTS = 64
CUT_MARK = " …[cut]"
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass
class CompletionLog:
    """The evaluations of one cell's completions.jsonl, in step order; the reference apart."""

    reference: Evaluation | None = None
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [e.step for e in self.evaluations]

    def add(self, record: Any) -> bool:
        """Take one decoded line; False when it is not an evaluation's answers (the caller counts it)."""
        evaluation = _evaluation(record)
        if evaluation is None:
            return False
        if evaluation.reference:
            self.reference = evaluation
            return True
        if self.evaluations and evaluation.step <= self.evaluations[-1].step:  # a resumed job went back
            self.evaluations = [e for e in self.evaluations if e.step < evaluation.step]
        self.evaluations.append(evaluation)
        if len(self.evaluations) > KEEP_TEXTS:  # let the texts of older evaluations go; their figures stay
            old = self.evaluations[-KEEP_TEXTS - 1]
            if old.completions:
                self.evaluations[-KEEP_TEXTS - 1] = Evaluation(
                    old.step, old.reference, old.max_new_tokens, old.seconds, old.stats
                )
        return True

    def reset(self) -> None:
        self.reference, self.evaluations = None, []

    def at(self, step: int | None) -> Evaluation | None:
        """The last evaluation at or before ``step`` (None: the last one)."""
        chosen = None
        for evaluation in self.evaluations:
            if step is not None and evaluation.step > step:
                break
            chosen = evaluation
        return chosen


def _evaluation(record: Any) -> Evaluation | None:
    if not isinstance(record, dict) or not isinstance(record.get("completions"), list):
        return None
    step = metrics.valid_step(record.get("step"))
    if step is None:
        return None
    limit = record.get("max_new_tokens")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
    seconds = record.get("seconds")
    seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
    answers = []
    for item in record["completions"][:MAX_SAMPLES]:
        answer = _completion(item)
        if answer is None:
            return None
        answers.append(answer)
    reference = record.get("reference") is True
    return Evaluation(int(step), reference, limit, seconds, length_stats(answers, limit), tuple(answers))


def _completion(item: Any) -> Completion | None:
    if not isinstance(item, dict):
        return None
    text, tokens = item.get("text"), item.get("tokens")
    if not isinstance(text, str) or not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        return None
    prompt = item.get("prompt")
    return Completion(
        id=_cut(str(item.get("id", "")), 64),
        prompt=_cut(prompt if isinstance(prompt, str) else "", MAX_PROMPT_CHARS),
        text=_cut(text, MAX_TEXT_CHARS),
        tokens=tokens,
        eos=item.get("eos") is True,
    )


def _cut(text: str, limit: int) -> str:
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + CUT_MARK


# ---- TRL's LogCompletionsCallback, as W&B writes it ------------------------------------------------
#
# With report_to="wandb", TRL's LogCompletionsCallback logs at each evaluation a table of step, prompt
# and completion, growing (each table holds every row so far), which W&B keeps as
# ``files/media/table/completions_<history step>_<hash>.table.json`` in the run folder. Its rows carry
# no token counts and no end-of-sequence mark: lengths are counted in words, and no answer is marked
# as cut. There is no reference (step 0) unless the run evaluated before training.

WANDB_TABLES = "files/media/table"
WANDB_TABLE_GLOB = "completions_*.table.json"
MAX_TABLE_BYTES = 32 << 20


def wandb_table(run_dir: Path) -> Path | None:
    """The newest completions table of a W&B run folder (the highest history step in its name)."""
    folder = run_dir / WANDB_TABLES
    try:
        tables = [p for p in folder.glob(WANDB_TABLE_GLOB) if p.is_file()]
    except OSError:
        return None

    def order(path: Path) -> tuple[int, float]:
        match = re.match(r"completions_(\d+)_", path.name)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        return (int(match.group(1)) if match else -1, mtime)

    return max(tables, key=order) if tables else None


def wandb_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The table's rows as completions.jsonl records, one per step, and the rows that could not be
    used (counted, never a traceback); a table over MAX_TABLE_BYTES is read as nothing (one bad row)."""
    try:
        if path.stat().st_size > MAX_TABLE_BYTES:
            return [], 1
        table = json.loads(safe.read_bytes(path))
    except (OSError, ValueError, RecursionError):
        return [], 1
    columns = table.get("columns") if isinstance(table, dict) else None
    rows = table.get("data") if isinstance(table, dict) else None
    if not isinstance(columns, list) or not isinstance(rows, list) or not {"step", "completion"} <= set(columns):
        return [], 1
    at = {name: columns.index(name) for name in ("step", "prompt", "completion") if name in columns}
    ids: dict[str, str] = {}
    by_step: dict[int, list[dict[str, Any]]] = {}
    bad = 0
    for row in rows:
        try:
            step = int(row[at["step"]])
            text = row[at["completion"]]
            prompt = row[at["prompt"]] if "prompt" in at else ""
        except (TypeError, ValueError, IndexError, KeyError):
            bad += 1
            continue
        if not isinstance(text, str) or not isinstance(prompt, str):
            bad += 1
            continue
        prompt_id = ids.setdefault(prompt, f"p{len(ids):02d}")
        answers = by_step.setdefault(step, [])
        if len(answers) < MAX_SAMPLES:
            answers.append({"id": prompt_id, "prompt": prompt, "text": text, "tokens": len(text.split()), "eos": True})
    records = [{"step": step, "reference": False, "completions": by_step[step]} for step in sorted(by_step)]
    return records, bad
