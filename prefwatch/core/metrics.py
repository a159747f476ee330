"""Canonical metric names: one vocabulary for TRL's keys, whatever logger wrote them.

TRL logs train metrics bare (``rewards/margins``) and evaluation metrics with an ``eval_`` prefix
(``eval_rewards/margins``); other loggers write ``train/`` and ``eval/`` prefixes. Every key maps
to a (split, name) pair, so each name has a train and a held-out series.
"""

from __future__ import annotations

import math
import re
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

# A cell keeps at most this many distinct metric names per split. TRL's DPO, SimPO and ORPO trainers
# log 15 to 25 names per split, so 64 leaves room for a user's own metrics; past it a log that invents
# a name per line (hostile or broken) would add a column of 8 bytes per row for every new name, and
# memory would grow with the square of the input. Values under names past the cap are counted, not kept.
MAX_NAMES = 64
# A metric name longer than this, or holding a control character, a quote or a backslash, is not one a
# trainer logs: its values are counted as rejected ("bad metric name") rather than shown.
MAX_NAME_CHARS = 200
_BAD_NAME = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]')
# Steps are counts of optimizer steps: a whole number from 0 up to what a float64 holds exactly.
MAX_STEP = float(1 << 53)

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
    # OpenRLHF's DPO trainer (openrlhf/trainer/dpo_trainer.py): β·(policy − reference), as TRL's.
    "chosen_reward": CHOSEN,
    "reject_reward": REJECTED,
}

# How writers that cannot put NaN or ±Infinity in JSON spell them: trackio and some W&B exports write
# the string "NaN" (Python's float("nan") spelling), "Infinity" / "-Infinity" (JavaScript's) or "inf".
# A value spelled so is the non-finite number it names, counted and flagged like a JSON NaN token.
NON_FINITE_TEXT = {
    **dict.fromkeys(("nan", "+nan", "-nan"), math.nan),
    **dict.fromkeys(("inf", "+inf", "infinity", "+infinity"), math.inf),
    **dict.fromkeys(("-inf", "-infinity"), -math.inf),
}


def non_finite_text(value: str) -> float | None:
    """The non-finite number a string spells ("NaN", "nan", "Infinity", "-inf"), else None: any other
    string is not a metric value.

    >>> non_finite_text("NaN"), non_finite_text("-Infinity"), non_finite_text("0.5")
    (nan, -inf, None)
    """
    return NON_FINITE_TEXT.get(value.strip().lower()) if len(value) <= 12 else None


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


def valid_name(key: str) -> bool:
    """Whether a logged key can be a metric name: short printable text without quotes or backslashes
    (the columnar decoder's field names cannot hold those, and no trainer writes them)."""
    return 0 < len(key) <= MAX_NAME_CHARS and _BAD_NAME.search(key) is None


@lru_cache(maxsize=4096)
def metric_name(key: str) -> str | None:
    """The canonical name a logged key's values are kept under, or None when the key is not a metric
    name (cached: a log repeats the same few keys on every line)."""
    return canonical(key)[1] if valid_name(key) else None


def valid_step(value: object) -> float | None:
    """A logged step as a float, or None when it is not a finite whole-ish number in 0..2^53
    (NaN, Infinity, 1e400 and negative steps would truncate or poison a series)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        step = float(value)
    except OverflowError:  # an int beyond a float's range
        return None
    return step if math.isfinite(step) and 0 <= step <= MAX_STEP else None


def is_end_record(record: dict[str, object]) -> bool:
    return any(key in record for key in END_KEYS)


def record_split(record: dict[str, object]) -> Split:
    """Which split a whole log record belongs to: TRL logs train and eval events as separate dicts."""
    for key in record:
        if key not in INDEX_KEYS and canonical(key)[0] == "eval":
            return "eval"
    return "train"
