"""completions.jsonl read back, bounded: every evaluation's figures, the texts of the recent ones.

A line is one evaluation (prefwatch.callback.completions writes it): ``step``, ``reference`` (step 0:
the reference's answers), ``max_new_tokens``, ``seconds`` and ``completions``, a list of ``id``,
``prompt``, ``text``, ``tokens``, ``eos``. The file is data written by a job, or by anyone: a line that
is not such a record is counted as rejected, never a traceback; texts longer than ``MAX_TEXT_CHARS``
are cut (with a mark), an evaluation keeps at most ``MAX_SAMPLES`` answers, and only the reference's
and the last ``KEEP_TEXTS`` evaluations' texts stay in memory (every evaluation's figures do).
Lone surrogates (what a JSON escape can make of bad UTF-8) are shown as escapes.
A run in W&B or trackio gets the same from the completions tables TRL logs there (``tables_for`` below).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prefwatch.core import metrics
from prefwatch.core.clock import SYSTEM, Clock
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


# ---- Completions tables in trackers' stores ---------------------------------------------------------
#
# TRL logs sampled completions as a table of ``step``, ``prompt`` and ``completion`` (plus rewards and
# advantages in its online trainers): LogCompletionsCallback to W&B (and Comet), a growing table that
# holds every row so far at each evaluation; GRPOTrainer, RLOOTrainer and the distillation trainers to
# W&B and trackio, one table per logged step (``log_completions``). A table's rows carry no token counts
# and no end-of-sequence mark: lengths are counted in words, and no answer is marked as cut. There is
# no reference (step 0) unless the run logged one before training.

MAX_TABLE_BYTES = 32 << 20  # a table (a W&B table file, one trackio metrics row) larger than this is one bad row
TABLE_SECONDS = 2.0  # a run's tables are looked for at most this often (they are rewritten, not appended)
TABLE_COLUMNS = ("step", "prompt", "completion")
BAD_ROW = "bad completions row"
_REMEMBERED = 4096  # prompts given ids, and bad rows told apart (a growing table repeats them), up to this many


class TableRows:
    """Rows of completions tables turned into completions.jsonl records, one per step; prompts get ids
    (``p00``, ``p01``, … in the order first seen) that stay the same from one table to the next."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self._bad: set[int] = set()

    def records(self, rows: list[Any], default_step: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """Records of the rows (dicts of column -> value), and how many rows are bad and not seen bad
        before. A row without a ``step`` column takes ``default_step`` (the step the table was logged at)."""
        by_step: dict[int, list[dict[str, Any]]] = {}
        bad = 0
        for index, row in enumerate(rows):
            answer = self._answer(row, default_step)
            if answer is None:
                bad += self._new_bad(index, row)
                continue
            step, item = answer
            answers = by_step.setdefault(step, [])
            if len(answers) < MAX_SAMPLES:
                answers.append(item)
        records = [{"step": step, "reference": False, "completions": by_step[step]} for step in sorted(by_step)]
        return records, bad

    def _answer(self, row: Any, default_step: int | None) -> tuple[int, dict[str, Any]] | None:
        if not isinstance(row, dict):
            return None
        step = metrics.valid_step(_number(row.get("step", default_step)))
        text, prompt = _message_text(row.get("completion")), _message_text(row.get("prompt", ""))
        if step is None or text is None or prompt is None:
            return None
        prompt_id = self.ids.get(prompt)
        if prompt_id is None:
            prompt_id = f"p{len(self.ids):02d}" if len(self.ids) < _REMEMBERED else "p?"
            if len(self.ids) < _REMEMBERED:
                self.ids[prompt] = prompt_id
        words = len(text.split())
        return int(step), {"id": prompt_id, "prompt": prompt, "text": text, "tokens": words, "eos": True}

    def _new_bad(self, index: int, row: Any) -> int:
        """1 for a bad row not seen before: a growing table repeats its rows, at the same places."""
        key = hash((index, repr(row)[:10_000]))
        if key in self._bad:
            return 0
        if len(self._bad) < _REMEMBERED:
            self._bad.add(key)
        return 1


def _number(value: Any) -> Any:
    """A step as TRL writes it: an int, or its text (LogCompletionsCallback writes ``str(step)``)."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return value


def _message_text(value: Any) -> str | None:
    """A prompt or completion: text, or a conversation (a list of messages, as TRL logs chat data)
    whose contents are joined one per line; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return "\n".join(m["content"] if isinstance(m.get("content"), str) else "" for m in value)
    return None


def add_new_steps(log: CompletionLog, records: list[dict[str, Any]]) -> tuple[bool, int]:
    """Add the records of steps after the log's last (a growing table repeats the earlier ones);
    (whether any was added, how many could not be)."""
    last = log.evaluations[-1].step if log.evaluations else -1
    added, bad = False, 0
    for record in records:
        if record["step"] > last:
            if log.add(record):
                added, last = True, record["step"]
            else:
                bad += 1
    return added, bad


class CompletionTables(Protocol):
    """A run's completions in its tracker's store (instead of completions.jsonl), followed by polling."""

    readers: tuple[Any, ...]  # the tracker's readers it follows (one per segment of a resumed run)

    def poll(self, log: CompletionLog, rejected: Counter[str]) -> bool: ...


def tables_for(tracker: Any, current: CompletionTables | None = None, clock: Clock = SYSTEM) -> CompletionTables | None:
    """The completions tables of a tracker's run (``current`` while it still follows the same run),
    or None where its store keeps none that prefwatch reads. A run resumed under new tracker runs comes
    as ``readers``, one per segment: W&B's table of the last, trackio's tables of each in turn."""
    readers = tuple(getattr(tracker, "readers", None) or [tracker])
    if current is not None and current.readers == readers:
        return current
    last = Path(getattr(readers[-1], "path", ""))
    if last.suffix == ".wandb":
        return WandbTables(last.parent, readers, clock)
    if all(callable(getattr(reader, "logged_tables", None)) for reader in readers):  # trackio's
        return TrackioTables(readers, clock)
    return None


class StoreTables:
    """The completions tables of a tracker's run as the cell's completions reader, following the run as
    its store reader changes (a resumed run's segment added, a store read again from its start)."""

    def __init__(self, tracker: Callable[[], Any], clock: Clock = SYSTEM) -> None:
        self.tracker = tracker
        self.clock = clock  # what TABLE_SECONDS is measured by
        self.tables: CompletionTables | None = None

    @classmethod
    def of(cls, tracker: Callable[[], Any], clock: Clock = SYSTEM) -> StoreTables | None:
        """None where the run's store keeps no tables prefwatch reads (its completions.jsonl is read)."""
        return cls(tracker, clock) if tables_for(tracker()) is not None else None

    def poll(self, log: CompletionLog, rejected: Counter[str]) -> bool:
        self.tables = tables_for(self.tracker(), self.tables, self.clock)
        return self.tables.poll(log, rejected) if self.tables is not None else False


# W&B keeps each logged table as ``files/media/table/<key>_<history step>_<hash>.table.json`` in the
# run folder: ``columns`` and row lists in ``data``. The newest holds LogCompletionsCallback's rows.

WANDB_TABLES = "files/media/table"
WANDB_TABLE_GLOB = "completions_*.table.json"


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
    at = {name: columns.index(name) for name in TABLE_COLUMNS if name in columns}
    named = [
        {name: row[i] for name, i in at.items() if i < len(row)} if isinstance(row, list) else None for row in rows
    ]
    return TableRows().records(named)


class WandbTables:
    """TRL's completions table in a W&B run folder, read whole again when a newer one appears."""

    def __init__(self, run_dir: Path, readers: tuple[Any, ...] = (), clock: Clock = SYSTEM) -> None:
        self.run_dir, self.readers, self.clock = run_dir, readers, clock
        self._checked = -math.inf
        self._seen: tuple[Path, int, int] | None = None

    def poll(self, log: CompletionLog, rejected: Counter[str]) -> bool:
        if self.clock.monotonic() - self._checked < TABLE_SECONDS:
            return False
        self._checked = self.clock.monotonic()
        table = wandb_table(self.run_dir)
        try:
            seen = (table, table.stat().st_size, table.stat().st_mtime_ns) if table is not None else None
        except OSError:
            seen = None
        if seen is None or seen == self._seen:
            return False
        self._seen = seen
        records, bad = wandb_records(seen[0])
        log.reset()
        for record in records:
            bad += not log.add(record)
        if bad:  # the table is read whole each time: its bad rows are counted once, not once per reading
            rejected[BAD_ROW] = bad
        return True


# trackio keeps a logged table inside the metrics row that logged it: ``{"completions": {"_type":
# "trackio.table", "_value": [{"step": …, "prompt": …, "completion": …}, …]}}`` (trackio 0.45). Its reader
# (readers/trackio.py ``logged_tables``) fetches the rows logged since the last look that hold a table.

TRACKIO_TABLE = "trackio.table"


class TrackioTables:
    """Completions tables logged to a trackio run (any key whose table has a ``completion`` column)."""

    def __init__(self, readers: tuple[Any, ...], clock: Clock = SYSTEM) -> None:
        self.readers, self.clock = readers, clock
        self.rows = TableRows()
        self._after = [0] * len(readers)  # the last metrics row id looked at, per segment
        self._checked = -math.inf
        self._started = False

    def poll(self, log: CompletionLog, rejected: Counter[str]) -> bool:
        if self.clock.monotonic() - self._checked < TABLE_SECONDS:
            return False
        self._checked = self.clock.monotonic()
        if not self._started:  # a new follower of the run (a segment was added): what was read is read again
            self._started = True
            log.reset()
        changed, bad = False, 0
        for index, reader in enumerate(self.readers):
            logged = reader.logged_tables(self._after[index], MAX_TABLE_BYTES)
            if logged is None:
                continue  # the store cannot be read now (its metrics reader says why): next look
            found, after = logged
            if after < 0:  # the database was replaced: its tables are read again from the start
                self._after, self._started = [0] * len(self.readers), False
                self._checked = -math.inf
                return True
            self._after[index] = after
            for counter, record in found:
                tables = _tables_in(record)
                if tables is None:
                    bad += 1
                    continue
                for rows in tables:
                    records, bad_rows = self.rows.records(rows, default_step=counter)
                    added, refused = add_new_steps(log, records)
                    changed |= added
                    bad += bad_rows + refused
        if bad:
            rejected[BAD_ROW] += bad
        return changed or bool(bad)


def _tables_in(record: Any) -> list[list[Any]] | None:
    """The completions tables of one trackio metrics row (as row lists); None when the row could not
    be read (over MAX_TABLE_BYTES: it would be held whole; not JSON)."""
    if not isinstance(record, dict):
        return None
    tables = []
    for value in record.values():
        if isinstance(value, dict) and value.get("_type") == TRACKIO_TABLE and isinstance(value.get("_value"), list):
            rows = value["_value"]
            if any(isinstance(row, dict) and "completion" in row for row in rows):
                tables.append(rows)
    return tables
