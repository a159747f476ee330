"""Crafted run directories in the real on-disk format (cell.json, metrics.jsonl, eval_pairs.jsonl,
status.json), with every number the verdict reads chosen by the test: held-out pairs won, the train
margin of the late half, the held-out margin, seeds, states, non-finite values and loss spikes.

A test that writes its grid with ``write_grid`` goes through the same path as a user's run:
open_path -> readers -> series -> diagnose -> decide -> report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prefwatch.run import jobs

PAIRS = 100  # held-out pairs of every crafted cell
STEPS = 100  # train steps; an evaluation every EVAL_EVERY
EVAL_EVERY = 10
LOSING_MARGIN = -0.1  # the held-out margin of a pair a cell ranks wrong


@dataclass
class Cell:
    """One crafted cell. The train margin is train_margin / 2 over the first half of the run and
    ``train_margin`` over the second half, so the review's late train margin is exactly ``train_margin``;
    at the last evaluation the first ``won`` pairs (rolled by ``shift``) are ranked right and the mean
    held-out margin is ``heldout_margin``. Held-out accuracy rises evaluation by evaluation, unless
    ``peaked``: then it peaks at step 30 and falls back while the train margin keeps rising
    (over-optimisation)."""

    id: str
    objective: str
    rank: int
    won: int
    train_margin: float = 1.0
    heldout_margin: float = 0.5
    seed: int = 0
    state: str = "finished"  # finished, failed, running (needs ``pid``), queued
    pid: int | None = None
    shift: int = 0
    peaked: bool = False
    nan_from: int | None = None  # train loss and margins are NaN from this step on
    spikes: tuple[int, ...] = ()  # steps whose train loss jumps to 50
    evaluations: bool = True
    last_time: float | None = None  # wall time of the last log line (default: a second ago)
    extra: dict[str, float] = field(default_factory=dict)
    # Writes completions.jsonl: the reference's answers at step 0, then at each evaluation answers whose
    # length moves evenly to this multiple of the reference's (0.25: a quarter as long at the end).
    completions: float | None = None

    def right_at(self, step: int) -> int:
        """Held-out pairs ranked right at the evaluation of ``step``."""
        if self.peaked:
            index = step // EVAL_EVERY - 1
            return self.won + (-20, -10, 10, 8, 6, 4, 2, 0, 0, 0)[index]
        return round(self.won * step / STEPS)


def write_grid(root: Path, name: str, cells: list[Cell]) -> Path:
    """A prefwatch run directory ``root/name`` holding ``cells``; returns its path."""
    run_dir = root / name
    for index, cell in enumerate(cells):
        folder = run_dir / "cells" / cell.id
        folder.mkdir(parents=True)
        _write_cell(folder, name, index, cell)
    (run_dir / "grid.toml").write_text(f'name = "{name}"\n')
    return run_dir


def _write_cell(folder: Path, grid: str, index: int, cell: Cell) -> None:
    info = {
        "id": cell.id,
        "grid": grid,
        "index": index,
        "objective": cell.objective,
        "rank": cell.rank,
        "seed": cell.seed,
        "train": {"max_steps": STEPS, "eval_every": EVAL_EVERY, "log_every": 1},
    }
    (folder / "cell.json").write_text(json.dumps(info))
    status: dict[str, object] = {"state": cell.state, "host": None}
    if cell.state == "failed":
        status["exit_code"] = 1
    if cell.pid is not None:
        status.update(pid=cell.pid, pgid=cell.pid, pid_start=jobs.process_start_time(cell.pid))
    (folder / "status.json").write_text(json.dumps(status))
    end = cell.last_time if cell.last_time is not None else time.time() - 1
    t0 = end - STEPS
    lines, pairs = [], []
    for step in range(1, STEPS + 1):
        margin = cell.train_margin * (0.5 if step <= STEPS // 2 else 1.0)
        loss = 50.0 if step in cell.spikes else 0.6 - 0.003 * step
        if cell.nan_from is not None and step >= cell.nan_from:
            margin = loss = float("nan")
        # Rewards shaped as each objective logs them (prefwatch reads the objective from this):
        # DPO's log-ratios around 0; SimPO's β (2.0) × the mean log-probability, below 0, logged beside it.
        base = -10.0 if cell.objective == "simpo" else 0.0
        chosen, rejected = base + margin / 2, base - margin / 2
        logps = {"logps/chosen": chosen / 2.0, "logps/rejected": rejected / 2.0} if cell.objective == "simpo" else {}
        row = {
            "loss": loss,
            "grad_norm": 1.0,
            "learning_rate": 5e-4,
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": margin,
            "rewards/accuracies": 0.8,
            **logps,
            "epoch": step / STEPS,
            "step": step,
            "time": t0 + step,
            **cell.extra,
        }
        lines.append(json.dumps(row))
        if cell.evaluations and step % EVAL_EVERY == 0:
            chosen = _heldout_chosen(cell, step)
            margin_mean = sum(chosen) / PAIRS
            accuracy = cell.right_at(step) / PAIRS
            eval_row = {
                "eval_loss": 0.7 - 0.2 * accuracy,
                "eval_rewards/chosen": margin_mean,
                "eval_rewards/rejected": 0.0,
                "eval_rewards/margins": margin_mean,
                "eval_rewards/accuracies": accuracy,
                "step": step,
                "time": t0 + step,
            }
            lines.append(json.dumps(eval_row))
            pairs.append(
                json.dumps(
                    {
                        "step": step,
                        "time": t0 + step,
                        "pair_ids": [f"h{i:04d}" for i in range(PAIRS)],
                        "chosen": chosen,
                        "rejected": [0.0] * PAIRS,
                    }
                )
            )
    if cell.state == "finished":
        lines.append(json.dumps({"train_runtime": 100.0, "train_loss": 0.45, "step": STEPS, "time": end}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if pairs:
        (folder / "eval_pairs.jsonl").write_text("\n".join(pairs) + "\n")
    if cell.completions is not None:
        answers = [json.dumps(_answers(0, 1.0, t0))]
        for step in range(EVAL_EVERY, STEPS + 1, EVAL_EVERY):
            answers.append(json.dumps(_answers(step, 1.0 + (cell.completions - 1.0) * step / STEPS, t0 + step)))
        (folder / "completions.jsonl").write_text("\n".join(answers) + "\n")


ANSWER_PROMPTS = ("what does it cost?", "can I see a demo?", "any team discount?")
ANSWER_TOKENS = 128  # max_new_tokens of the crafted answers


def _answers(step: int, factor: float, when: float) -> dict[str, object]:
    """One completions.jsonl line: an answer per prompt, ``factor`` times the reference's length (in
    bytes, as the tiny model's tokens), grown with a pushy line or cut, capped at ANSWER_TOKENS."""
    completions = []
    for i, question in enumerate(ANSWER_PROMPTS):
        reference = f"Thanks! Item {i} ships in {i + 2} days. Anything else?"
        text = reference
        while len(text) < factor * len(reference):
            text += " P.S. Free gift!"
        text = text[: max(1, round(factor * len(reference)))].rstrip()
        ended = len(text) < ANSWER_TOKENS
        text = text[:ANSWER_TOKENS]
        prompt = f"Customer: {question}\nAgent:"
        completions.append({"id": f"h{i * 10:04d}", "prompt": prompt, "text": text, "tokens": len(text), "eos": ended})
    return {
        "step": step,
        "time": when,
        "reference": step == 0,
        "max_new_tokens": ANSWER_TOKENS,
        "seconds": 0.05,
        "completions": completions,
    }


def _heldout_chosen(cell: Cell, step: int) -> list[float]:
    """Per-pair chosen rewards (rejected ones are 0): the pairs ranked right at ``step`` get one value,
    the others LOSING_MARGIN; at the last evaluation their mean is the cell's held-out margin."""
    right = cell.right_at(step)
    if right <= 0:
        return [LOSING_MARGIN] * PAIRS
    winning = (cell.heldout_margin * PAIRS - (PAIRS - right) * LOSING_MARGIN) / right
    values = [winning if i < right else LOSING_MARGIN for i in range(PAIRS)]
    shift = cell.shift % PAIRS
    return values[-shift:] + values[:-shift] if shift else values


@contextmanager
def live_process() -> Iterator[int]:
    """A real process that stays alive until the block ends (a crafted 'running' cell's job)."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield process.pid
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
