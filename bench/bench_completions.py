"""What sampling completions adds to an evaluation (goal: at most half of the evaluation's own time).

    python bench/bench_completions.py [--objective dpo|simpo|orpo] [--repeats 5]

Builds one tiny-demo cell's trainer (8 sampled held-out prompts, 64 new tokens at most) and times, in
the same run and interleaved: TRL's evaluation with the sampling off (the floor), the greedy answers
as the trainer generates them (one batched ``generate`` call: the adapter's, then the reference's with
the adapter off), and the worst case, every answer forced to max_new_tokens. The figure is the
generation's time per evaluation, the floor the evaluation's; best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from table import Row, format_rows  # noqa: E402

GOAL = 0.5  # the share of an evaluation's time the sampled completions may take


def run(objective: str = "dpo", repeats: int = 5) -> list[Row]:
    import torch

    from prefwatch.callback import PrefwatchCallback
    from prefwatch.files.settings import CellSettings
    from prefwatch.train.cell import resolve_cell
    from prefwatch.train.data import load_splits
    from prefwatch.train.run import build_trainer, load_model

    with tempfile.TemporaryDirectory() as tmp:
        cell_dir = Path(tmp)
        cell = resolve_cell(CellSettings(objective=objective, id="bench"), cell_dir / "cell.json")
        torch.set_num_threads(cell.threads)
        model, tokenizer = load_model(cell.model)
        train_pairs, heldout_pairs = load_splits(cell.data)
        trainer = build_trainer(cell, cell_dir, model, tokenizer, train_pairs, heldout_pairs)
        callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, PrefwatchCallback))
        sampler = callback.sampler
        assert sampler is not None and sampler.prompts
        trainer.remove_callback(callback)  # the evaluation alone: the floor
        timings: dict[str, list[float]] = {"evaluation": [], "answers": [], "reference": [], "worst": []}
        for _ in range(repeats):
            started = time.perf_counter()
            trainer.evaluate()
            timings["evaluation"].append(time.perf_counter() - started)
            for name, reference, forced in (("answers", False, 0), ("reference", True, 0), ("worst", False, 64)):
                sampler.min_new_tokens = forced
                started = time.perf_counter()
                sampler.generate(trainer.model, tokenizer, 0, reference=reference)
                timings[name].append(time.perf_counter() - started)
    floor = min(timings["evaluation"])
    note = f"{len(sampler.prompts)} prompts, {objective}"
    return [
        Row(f"completions per evaluation ({note})", min(timings["answers"]), "s", floor, GOAL),
        Row("completions, the reference's (adapter off)", min(timings["reference"]), "s", floor, GOAL),
        Row("completions, every answer at max_new_tokens", min(timings["worst"]), "s", floor, GOAL),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="dpo", choices=("dpo", "simpo", "orpo"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(harness.uptime(), flush=True)
    rows = run(args.objective, args.repeats)
    print(format_rows(rows))
    print(harness.uptime())


if __name__ == "__main__":
    main()
