"""Write a large TRL-shaped DPO metrics.jsonl (train lines only) and TensorBoard event files for the benchmarks."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TRAIN_KEYS = [
    "loss",
    "grad_norm",
    "learning_rate",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "epoch",
    "num_tokens",
    "mean_token_accuracy",
    "entropy",
    "rewards/chosen_std",
    "rewards/rejected_std",
    "kl",
]


def write(path: Path, lines: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    t = 1_700_000_000.0
    with open(path, "w") as f:
        for step in range(1, lines + 1):
            t += 0.5
            record = {key: rng.random() for key in TRAIN_KEYS}
            record.update(step=step, time=t)
            f.write(json.dumps(record) + "\n")
    return path


def write_events(folder: Path, scalars: int, seed: int = 0) -> Path:
    """A TensorBoard event file as TRL's TensorBoardCallback writes it (``train/`` tags, an
    ``eval/`` group every 100 steps), holding about ``scalars`` scalar points; needs tensorboard."""
    from torch.utils.tensorboard import SummaryWriter

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(folder), flush_secs=3600, max_queue=100_000)
    written, step = 0, 0
    while written < scalars:
        step += 1
        for key in TRAIN_KEYS:
            writer.add_scalar(f"train/{key}", rng.random(), step)
        written += len(TRAIN_KEYS)
        if step % 100 == 0:
            for key in ("loss", "rewards/accuracies", "rewards/margins"):
                writer.add_scalar(f"eval/{key}", rng.random(), step)
            written += 3
    writer.close()
    return next(folder.glob("events.out.tfevents.*"))


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/prefwatch-bench/metrics.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    write(out, n)
    print(f"{out}: {n} lines, {out.stat().st_size / 1e6:.0f} MB")
