"""How much the per-pair held-out capture adds to TRL's evaluation (target: at most 20 %).

    python bench/bench_eval_pairs.py [--objective dpo|simpo|orpo] [--repeats 5]

Builds one tiny-demo cell's trainer and times `evaluate()` over the held-out split with the capture
off (plain TRL evaluation) and on (eval_pairs.jsonl written), interleaved, and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from prefwatch.files.settings import CellSettings  # noqa: E402
from prefwatch.train.cell import resolve_cell  # noqa: E402
from prefwatch.train.data import load_splits  # noqa: E402
from prefwatch.train.run import build_trainer, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="dpo", choices=("dpo", "simpo", "orpo"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cell_dir = Path(tmp)
        cell = resolve_cell(CellSettings(objective=args.objective, id="bench"), cell_dir / "cell.json")
        import torch

        torch.set_num_threads(cell.threads)
        model, tokenizer = load_model(cell.model)
        train_pairs, heldout_pairs = load_splits(cell.data)
        trainer = build_trainer(cell, cell_dir, model, tokenizer, train_pairs, heldout_pairs)
        pair_log = trainer.pair_log
        timings = {"off": [], "on": []}
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                trainer.pair_log = pair_log if mode == "on" else None
                started = time.perf_counter()
                trainer.evaluate()
                timings[mode].append(time.perf_counter() - started)
    off, on = min(timings["off"]), min(timings["on"])
    print(
        f"{args.objective}: {len(heldout_pairs)} held-out pairs, best of {args.repeats}: "
        f"plain eval {off:.3f}s, with per-pair capture {on:.3f}s, ratio {on / off:.3f}"
    )


if __name__ == "__main__":
    main()
