"""Canonical metric names: one vocabulary for TRL's keys, whatever logger wrote them.

TRL logs train metrics bare (``rewards/margins``) and evaluation metrics with an ``eval_`` prefix
(``eval_rewards/margins``); other loggers write ``train/`` and ``eval/`` prefixes. Every key maps
to a (split, name) pair, so each name has a train and a held-out series.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

Split = Literal["train", "eval"]
SPLITS: tuple[Split, Split] = ("train", "eval")

CHOSEN = "rewards/chosen"
REJECTED = "rewards/rejected"
MARGINS = "rewards/margins"
ACCURACIES = "rewards/accuracies"
LOGPS_CHOSEN = "logps/chosen"
LOGPS_REJECTED = "logps/rejected"
LOSS = "loss"
GRAD_NORM = "grad_norm"
LEARNING_RATE = "learning_rate"

# Keys that index a record rather than measure anything.
INDEX_KEYS = frozenset({"step", "time", "epoch"})

# The Trainer's end-of-training record: it marks a cell finished; it is not a data point.
END_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}
)

# Other loggers' spellings of TRL's names.
ALIASES = {
    "log_odds_ratio": "log_odds_ratio",
    "log_odds_chosen": "log_odds_chosen",
    "nll_loss": "nll_loss",
    "logits/chosen": "logits/chosen",
    "logits/rejected": "logits/rejected",
    "accuracy": ACCURACIES,
    "rewards/accuracy": ACCURACIES,
    "rewards/margin": MARGINS,
}


@lru_cache(maxsize=4096)
def canonical(key: str) -> tuple[Split, str]:
    """The split and canonical name of a logged key.

    >>> canonical("eval_rewards/margins")
    ('eval', 'rewards/margins')
    >>> canonical("train/loss")
    ('train', 'loss')
    """
    split: Split = "train"
    name = key
    if name.startswith("eval_"):
        split, name = "eval", name[5:]
    elif name.startswith("eval/"):
        split, name = "eval", name[5:]
    elif name.startswith("train/"):
        name = name[6:]
    return split, ALIASES.get(name, name)


def is_end_record(record: dict[str, object]) -> bool:
    return any(key in record for key in END_KEYS)


def record_split(record: dict[str, object]) -> Split:
    """Which split a whole log record belongs to: TRL logs train and eval events as separate dicts."""
    for key in record:
        if key not in INDEX_KEYS and canonical(key)[0] == "eval":
            return "eval"
    return "train"
